"""A master key that lives in an HSM and never leaves it (PKCS#11, through ``python-pkcs11``).

The wrapping key is an AES-256 secret key object generated *in* the token
(``carecli keys hsm-init``): a token object, private, sensitive and never
extractable, usable only to encrypt and decrypt. Wrapping a data key is one
AES-GCM encryption inside the token with a random 12-byte IV and the same
additional data as :class:`~carecli.data.crypto.master.LocalMasterKey`
(``b"carecli/data-key/" + id``), so a wrapped key pasted under another row's
id will not unwrap; the stored value is ``iv + ciphertext + tag``, the same
layout as a local key's. Unwrapping is the matching decryption in the token.

The key's id is ``pkcs11:<token label>/<key label>:<kcv>``, where the KCV
(key check value) is the token's AES-ECB encryption of a zero block: stable
for the key, different for another key under the same labels, and of no use
in recovering the key.

PKCS#11 keeps one login state per process and token, and a session must not
be used by two threads at once: each process therefore holds one logged-in
session per token, shared by every :class:`Pkcs11MasterKey` on it and used
under a lock. A session the token drops (restarted, unplugged) is reopened
once before an operation gives up.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from carecli.data.crypto.master import KEY_BYTES, NONCE_BYTES, _wrap_aad, read_private_file
from carecli.errors import ConfigError, KeyUnavailable

if TYPE_CHECKING:
    from carecli.config import Settings

TAG_BYTES = 16
DEFAULT_KEY_LABEL = "carecli-master"
#: data_keys.master_key_id (and audit_seal_keys') is VARCHAR(64)
MAX_KEY_ID = 64
KCV_HEX = 16
#: the block the key check value encrypts (the usual KCV input: zeros)
_KCV_BLOCK = bytes(16)

T = TypeVar("T")


@dataclass(frozen=True)
class HsmConfig:
    """Where the master key is: the PKCS#11 module, the token, the key's label, and the PIN."""

    module: Path
    token: str
    key_label: str = DEFAULT_KEY_LABEL
    pin: str = field(default="", repr=False)
    #: where the PIN came from (CARECLI_HSM_PIN or the PIN file), for messages
    pin_source: str = "CARECLI_HSM_PIN"

    @property
    def where(self) -> str:
        return f"token '{self.token}' of PKCS#11 module {self.module}"


def hsm_configured(settings: Settings) -> bool:
    return settings.hsm_module is not None


def hsm_config(settings: Settings) -> HsmConfig:
    """The HSM settings, checked; the PIN read from CARECLI_HSM_PIN or its 0600 file.

    Raises :class:`ConfigError` naming what is missing (never the PIN itself).
    """
    if settings.hsm_module is None:
        raise ConfigError("no HSM is configured",
                          hint="set CARECLI_HSM_MODULE to the token's PKCS#11 module (a .so file), "
                               "CARECLI_HSM_TOKEN to its label and CARECLI_HSM_PIN_FILE to a 0600 file "
                               "holding the user PIN (or the [hsm] section of the config file)")
    if not settings.hsm_token:
        raise ConfigError("CARECLI_HSM_MODULE is set, but no token label is",
                          hint="set CARECLI_HSM_TOKEN (or [hsm] token) to the label of the token holding "
                               "the master key (`softhsm2-util --show-slots` or `pkcs11-tool -L` lists them)")
    if settings.hsm_pin:
        pin, source = settings.hsm_pin, "CARECLI_HSM_PIN"
    elif settings.hsm_pin_file is not None:
        pin, source = _read_pin_file(settings.hsm_pin_file), f"PIN file {settings.hsm_pin_file}"
    else:
        raise ConfigError(f"no PIN is configured for HSM token '{settings.hsm_token}'",
                          hint="set CARECLI_HSM_PIN_FILE to a 0600 file holding the token's user PIN "
                               "(or CARECLI_HSM_PIN)")
    return HsmConfig(settings.hsm_module, settings.hsm_token, settings.hsm_key_label or DEFAULT_KEY_LABEL,
                     pin, source)


def _read_pin_file(path: Path) -> str:
    source = f"HSM PIN file {path}"
    pin = read_private_file(path, source=source, missing_hint="check CARECLI_HSM_PIN_FILE").strip()
    if not pin:
        raise ConfigError(f"{source} is empty", hint="write the token's user PIN into it")
    return pin


# -- the library and the shared session ---------------------------------------------------------------------


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:  # pragma: no cover - a dependency of carecli; only a broken install lacks it
        raise ConfigError("the python-pkcs11 package is not installed",
                          hint="reinstall carecli (`make install`)") from None
    return pkcs11


def _session_errors() -> tuple[type[Exception], ...]:
    """Errors after which a fresh session may succeed: the token dropped ours."""
    exc = _pkcs11().exceptions
    return (exc.SessionClosed, exc.SessionHandleInvalid, exc.DeviceRemoved, exc.TokenNotPresent,
            exc.UserNotLoggedIn, exc.ObjectHandleInvalid, exc.KeyHandleInvalid)


class _TokenSession:
    """This process's one logged-in session on a token (PKCS#11 login is per process and token)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pin_digest = b""
        self._session: Any = None
        self._keys: dict[str, Any] = {}

    def session(self, config: HsmConfig) -> Any:
        """The logged-in session, opened on first use, after the token dropped it, or to log in with
        another PIN (so a wrong one is found wrong however many keys this process has opened); hold ``lock``."""
        digest = _pin_digest(config.pin)
        if self._session is not None and not hmac.compare_digest(digest, self.pin_digest):
            self.drop()  # closing the process's only session on the token logs it out
        if self._session is None:
            self._session = _open_session(config)
            self.pin_digest = digest
            self._keys.clear()
        return self._session

    def key(self, config: HsmConfig) -> Any:
        """The wrapping key's handle in this session; hold ``lock``."""
        session = self.session(config)
        if config.key_label not in self._keys:
            self._keys[config.key_label] = _find_key(session, config)
        return self._keys[config.key_label]

    def drop(self) -> None:
        session, self._session = self._session, None
        self._keys.clear()
        if session is not None:
            try:
                session.close()
            except Exception:  # noqa: BLE001 - a dead session may refuse even to close
                pass


_SESSIONS: dict[tuple[str, str], _TokenSession] = {}
_SESSIONS_LOCK = threading.Lock()


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(b"carecli hsm pin\0" + pin.encode("utf-8")).digest()


def _shared(config: HsmConfig) -> _TokenSession:
    key = (str(config.module), config.token)
    with _SESSIONS_LOCK:
        shared = _SESSIONS.get(key)
        if shared is None:
            shared = _SESSIONS[key] = _TokenSession()
        return shared


def close_sessions() -> None:
    """Log out of every token this process opened (tests; a process's exit does the same)."""
    with _SESSIONS_LOCK:
        for shared in _SESSIONS.values():
            with shared.lock:
                shared.drop()
        _SESSIONS.clear()


def _load_module(config: HsmConfig) -> Any:
    pkcs11 = _pkcs11()
    if not config.module.is_file():
        raise ConfigError(f"the PKCS#11 module {config.module} does not exist",
                          hint="check CARECLI_HSM_MODULE (SoftHSM2's is /usr/lib/softhsm/libsofthsm2.so)")
    try:
        return pkcs11.lib(str(config.module))
    except pkcs11.exceptions.PKCS11Error as exc:
        raise ConfigError(f"cannot load the PKCS#11 module {config.module}: {_describe(exc)}",
                          hint="check CARECLI_HSM_MODULE names the vendor's PKCS#11 library") from None


def _describe(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def _open_session(config: HsmConfig) -> Any:
    pkcs11 = _pkcs11()
    errors = pkcs11.exceptions
    lib = _load_module(config)
    try:
        token = lib.get_token(token_label=config.token)
    except errors.NoSuchToken:
        labels = _token_labels(lib)
        raise ConfigError(f"no token labelled '{config.token}' in PKCS#11 module {config.module}",
                          hint="check CARECLI_HSM_TOKEN; tokens found: "
                               + (", ".join(f"'{label}'" for label in labels) or "none")) from None
    except errors.MultipleTokensReturned:
        raise ConfigError(f"more than one token is labelled '{config.token}' in {config.module}",
                          hint="give each token its own label") from None
    except errors.PKCS11Error as exc:
        raise ConfigError(f"cannot list the tokens of {config.module}: {_describe(exc)}") from None
    try:
        return token.open(rw=True, user_pin=config.pin)
    except (errors.PinIncorrect, errors.PinInvalid, errors.PinLenRange):
        # Never the PIN itself: only where it came from.
        raise ConfigError(f"the PIN from {config.pin_source} is not the user PIN of {config.where}",
                          hint="check CARECLI_HSM_PIN / CARECLI_HSM_PIN_FILE (repeated wrong PINs may lock "
                               "the token)") from None
    except errors.PinLocked:
        raise ConfigError(f"the user PIN of {config.where} is locked",
                          hint="the token's security officer must unlock or reset it") from None
    except errors.UserPinNotInitialized:
        raise ConfigError(f"{config.where} has no user PIN yet",
                          hint="initialise it (e.g. `softhsm2-util --init-token ... --pin ...`)") from None
    except errors.UserAlreadyLoggedIn:
        # Another session of this process (outside carecli's shared one) logged in: ours is usable.
        return token.open(rw=True)
    except errors.PKCS11Error as exc:
        raise ConfigError(f"cannot open a session on {config.where}: {_describe(exc)}") from None


def _token_labels(lib: Any) -> list[str]:
    labels = []
    try:
        for slot in lib.get_slots(token_present=True):
            try:
                labels.append(slot.get_token().label)
            except Exception:  # noqa: BLE001 - an unreadable slot is just not listed
                continue
    except Exception:  # noqa: BLE001
        pass
    return labels


def _find_key(session: Any, config: HsmConfig) -> Any:
    pkcs11 = _pkcs11()
    errors = pkcs11.exceptions
    Attribute = pkcs11.Attribute
    try:
        key = session.get_key(object_class=pkcs11.ObjectClass.SECRET_KEY, label=config.key_label)
    except errors.NoSuchKey:
        raise ConfigError(f"no key labelled '{config.key_label}' in {config.where}",
                          hint="make it with `carecli keys hsm-init`, or check CARECLI_HSM_KEY_LABEL") from None
    except errors.MultipleObjectsReturned:
        raise ConfigError(f"more than one secret key is labelled '{config.key_label}' in {config.where}",
                          hint="give the master key a label of its own (CARECLI_HSM_KEY_LABEL)") from None
    try:
        attributes = key.get_attributes([Attribute.KEY_TYPE, Attribute.VALUE_LEN, Attribute.SENSITIVE,
                                         Attribute.EXTRACTABLE])
    except errors.PKCS11Error as exc:
        raise ConfigError(f"cannot read the attributes of key '{config.key_label}' in {config.where}: "
                          f"{_describe(exc)}") from None
    if attributes[Attribute.KEY_TYPE] != pkcs11.KeyType.AES or attributes[Attribute.VALUE_LEN] != KEY_BYTES:
        raise ConfigError(f"key '{config.key_label}' in {config.where} is not an AES-256 key",
                          hint="carecli's master key is an AES-256 key made by `carecli keys hsm-init`")
    if not attributes[Attribute.SENSITIVE] or attributes[Attribute.EXTRACTABLE]:
        raise ConfigError(f"key '{config.key_label}' in {config.where} can leave the token "
                          "(it is not sensitive, or it is extractable)",
                          hint="carecli uses only a key that never leaves the token: make one with "
                               "`carecli keys hsm-init` under another label")
    return key


# -- the master key --------------------------------------------------------------------------------------------


class Pkcs11MasterKey:
    """A :class:`~carecli.data.crypto.master.MasterKey` whose key stays in a PKCS#11 token."""

    def __init__(self, config: HsmConfig, *, _fingerprint: str | None = None) -> None:
        self._config = config
        self._shared = _shared(config)
        self._fingerprint = _fingerprint or self._call(_fingerprint_of)
        key_id = f"pkcs11:{config.token}/{config.key_label}:{self._fingerprint}"
        if len(key_id) > MAX_KEY_ID:
            raise ConfigError(
                f"the token label '{config.token}' and key label '{config.key_label}' are too long together "
                f"for a master key id (at most {MAX_KEY_ID - len('pkcs11:/:') - KCV_HEX} characters)",
                hint="use a shorter CARECLI_HSM_KEY_LABEL")
        self._key_id = key_id

    def __repr__(self) -> str:
        return f"Pkcs11MasterKey(key_id={self._key_id!r}, module={str(self._config.module)!r})"

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def source(self) -> str:
        return f"the HSM (key '{self._config.key_label}' in {self._config.where})"

    @property
    def config(self) -> HsmConfig:
        return self._config

    def _call(self, operation: Callable[[Any], T]) -> T:
        """``operation(key)`` under the session lock; once more on a fresh session if the token dropped ours."""
        shared = self._shared
        with shared.lock:
            try:
                return operation(shared.key(self._config))
            except _session_errors():
                shared.drop()
                return operation(shared.key(self._config))

    def wrap(self, data_key: bytes, *, data_key_id: uuid.UUID) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11.exceptions import PKCS11Error
        from pkcs11.mechanisms import GCMParams

        iv = os.urandom(NONCE_BYTES)
        params = GCMParams(iv, _wrap_aad(data_key_id), TAG_BYTES * 8)
        try:
            sealed = self._call(lambda key: key.encrypt(data_key, mechanism=Mechanism.AES_GCM,
                                                        mechanism_param=params))
        except PKCS11Error as exc:
            raise KeyUnavailable(f"the HSM could not wrap data key {data_key_id} with {self._key_id}: "
                                 f"{_describe(exc)}",
                                 hint="check that the token supports AES-GCM (CKM_AES_GCM)") from None
        return iv + bytes(sealed)

    def unwrap(self, wrapped: bytes, *, data_key_id: uuid.UUID) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11.exceptions import PKCS11Error
        from pkcs11.mechanisms import GCMParams

        if len(wrapped) < NONCE_BYTES + TAG_BYTES:
            raise self._cannot_unwrap(data_key_id)
        params = GCMParams(wrapped[:NONCE_BYTES], _wrap_aad(data_key_id), TAG_BYTES * 8)
        try:
            return bytes(self._call(lambda key: key.decrypt(wrapped[NONCE_BYTES:], mechanism=Mechanism.AES_GCM,
                                                            mechanism_param=params)))
        except _session_errors() as exc:
            raise KeyUnavailable(f"the HSM ({self._config.where}) is not answering: {_describe(exc)}",
                                 hint="check that the token is present and the HSM reachable") from None
        except PKCS11Error:
            # A wrong tag surfaces as EncryptedDataInvalid, or GeneralError on some tokens (SoftHSM).
            raise self._cannot_unwrap(data_key_id) from None

    def _cannot_unwrap(self, data_key_id: uuid.UUID) -> KeyUnavailable:
        return KeyUnavailable(
            f"the master key from {self.source} cannot unwrap data key {data_key_id}",
            hint="this is not the master key these data keys were wrapped with (or the wrapped key was altered); "
                 "check CARECLI_HSM_TOKEN / CARECLI_HSM_KEY_LABEL, or unset CARECLI_HSM_MODULE if they are "
                 "still wrapped by a local key (`carecli keys rewrap --to-hsm` moves them)",
        )


def _fingerprint_of(key: Any) -> str:
    """The key check value: the token's AES-ECB encryption of a zero block (or the token's CKA_CHECK_VALUE,
    or CKA_ID, where ECB is not allowed)."""
    from pkcs11 import Attribute, Mechanism
    from pkcs11.exceptions import PKCS11Error

    try:
        return bytes(key.encrypt(_KCV_BLOCK, mechanism=Mechanism.AES_ECB)).hex()[:KCV_HEX]
    except PKCS11Error:
        pass
    for attribute in (Attribute.CHECK_VALUE, Attribute.ID):
        try:
            value = bytes(key[attribute])
        except PKCS11Error:
            continue
        if value:
            return value.hex()[:KCV_HEX]
    raise ConfigError("the HSM key has neither a check value nor an id to name it by",
                      hint="give the key a CKA_ID, or allow AES-ECB on it")


def open_master_key(config: HsmConfig) -> Pkcs11MasterKey:
    """The HSM master key under ``config`` (it must exist: `carecli keys hsm-init` makes it)."""
    return Pkcs11MasterKey(config)


def generate_master_key_in_token(config: HsmConfig) -> Pkcs11MasterKey:
    """Generate the AES-256 wrapping key in the token; refuse when the label is taken.

    The key is a token object, private, sensitive, never extractable, for
    encrypt/decrypt only (no wrap, sign or derive) and not modifiable or copyable.
    """
    from pkcs11 import Attribute, KeyType, MechanismFlag
    from pkcs11.exceptions import PKCS11Error

    shared = _shared(config)
    with shared.lock:
        try:
            session = shared.session(config)
        except _session_errors():
            shared.drop()
            session = shared.session(config)
        if _any_object_labelled(session, config):
            raise ConfigError(f"{config.where} already holds a key labelled '{config.key_label}'",
                              hint="carecli never replaces a master key: use it as it is, or choose another "
                                   "label with CARECLI_HSM_KEY_LABEL")
        try:
            session.generate_key(
                KeyType.AES, KEY_BYTES * 8, id=os.urandom(16), label=config.key_label, store=True,
                capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                          Attribute.EXTRACTABLE: False, Attribute.WRAP: False, Attribute.UNWRAP: False,
                          Attribute.SIGN: False, Attribute.VERIFY: False, Attribute.DERIVE: False,
                          Attribute.MODIFIABLE: False, Attribute.COPYABLE: False})
        except PKCS11Error as exc:
            raise ConfigError(f"{config.where} could not generate an AES-256 key: {_describe(exc)}",
                              hint="check that the token supports CKM_AES_KEY_GEN and has room for a key") from None
        shared._keys.pop(config.key_label, None)
    return Pkcs11MasterKey(config)


def _any_object_labelled(session: Any, config: HsmConfig) -> bool:
    from pkcs11 import Attribute

    return next(iter(session.get_objects({Attribute.LABEL: config.key_label})), None) is not None
