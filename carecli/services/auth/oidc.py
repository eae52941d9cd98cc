"""Sign-in with an OpenID Connect provider: the OAuth 2.0 Device Authorization Grant (RFC 8628).

A terminal has no browser to redirect back to, so carecli asks the provider
for a device code, shows the person a URL and a short user code to enter on
any device, and polls the token endpoint until the person approves or denies
(or the code expires). The tokens that come back are then checked locally
against the issuer's published keys (JWKS): the signature with an algorithm
allow-list, then issuer, audience, expiry, not-before and issued-at.

authlib's ``OAuth2Session`` speaks to the token endpoint; ``joserfc`` (the
JOSE library authlib itself depends on and recommends in place of its
deprecated ``authlib.jose``, which warns on every import) checks the JWTs.

Nothing here puts a token, a device code or a key into an exception message
or a log line: errors name the check that failed, never the value.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import ECKey, KeySet, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from carecli.errors import AuthError, ConfigError

if TYPE_CHECKING:
    from joserfc.jwk import Key

    from carecli.config import Settings

__all__ = [
    "ALLOWED_ALGORITHMS",
    "DEVICE_CODE_GRANT",
    "DeviceAuthorization",
    "IdentityClaims",
    "LoginDenied",
    "LoginExpired",
    "LoginFailed",
    "OidcClient",
    "OidcSettings",
    "ProviderUnavailable",
    "TokenInvalid",
]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

# Asymmetric algorithms only: "none" would accept unsigned tokens, and HS*
# would let anyone holding the *public* key mint tokens (the classic
# RS256 -> HS256 confusion), so neither may ever be chosen by a token header.
ALLOWED_ALGORITHMS: tuple[str, ...] = ("RS256", "RS384", "RS512", "ES256", "PS256")
_KEY_TYPE_FOR_ALG = {"RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "PS256": "RSA", "ES256": "EC"}

# RFC 8628 section 3.2: the default polling interval when the provider names none.
_DEFAULT_INTERVAL = 5
# RFC 8628 section 3.5: slow_down adds 5 seconds to this and every later poll.
_SLOW_DOWN_STEP = 5
# Transient failures while polling (connection refused, 5xx) are retried with
# backoff; this many in a row means the provider is really gone.
_MAX_TRANSIENT_FAILURES = 3
_MAX_BACKOFF_SECONDS = 60
# A JWT from a real provider is a few kB; refuse absurd inputs before parsing.
_MAX_TOKEN_LENGTH = 16_384


class LoginFailed(AuthError):
    """The identity provider ended the device sign-in with an error."""


class LoginDenied(LoginFailed):
    """The person declined the sign-in on the provider's page (``access_denied``)."""


class LoginExpired(LoginFailed):
    """The device code expired before the person approved it (``expired_token``)."""


class TokenInvalid(AuthError):
    """A token failed validation; the message names the check, never the token."""


class ProviderUnavailable(AuthError):
    """The identity provider could not be reached or answered something unusable."""


@dataclass(frozen=True)
class OidcSettings:
    """Where the identity provider is and who carecli is to it."""

    issuer: str
    client_id: str
    audience: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcSettings:
        """Build from carecli's settings; ConfigError when the issuer or client id is missing."""
        if not settings.oidc_issuer:
            raise ConfigError(
                "no OpenID Connect issuer is configured",
                hint="set CARECLI_OIDC_ISSUER (and CARECLI_OIDC_CLIENT_ID, CARECLI_OIDC_AUDIENCE)",
            )
        if not settings.oidc_client_id:
            raise ConfigError(
                "CARECLI_OIDC_ISSUER is set but no OAuth client id is",
                hint="set CARECLI_OIDC_CLIENT_ID to carecli's client id at the identity provider",
            )
        return cls(settings.oidc_issuer, settings.oidc_client_id, settings.oidc_audience or None)


@dataclass(frozen=True)
class DeviceAuthorization:
    """What the provider answered to a device authorization request (RFC 8628 section 3.2).

    ``device_code`` is a credential for the token endpoint: show the person
    ``verification_uri`` and ``user_code``, never the device code.
    """

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    interval: int
    expires_in: int

    def __repr__(self) -> str:
        # Keeps the device code out of logs and test failure output.
        return (
            f"DeviceAuthorization(user_code={self.user_code!r}, verification_uri={self.verification_uri!r}, "
            f"interval={self.interval}, expires_in={self.expires_in})"
        )


@dataclass(frozen=True)
class IdentityClaims:
    """Who a validated token says the person is."""

    subject: str
    email: str | None
    name: str | None
    issuer: str


@dataclass(frozen=True)
class _ProviderMetadata:
    issuer: str
    device_authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


class OidcClient:
    """Device-code sign-in and token validation against one OpenID Connect issuer.

    One instance caches the provider's discovery document and its JWKS; it
    is safe to share between threads (the SSH host signs many people in).
    """

    def __init__(
        self,
        settings: OidcSettings,
        *,
        session: requests.Session | None = None,
        leeway: int = 60,
        timeout: float = 10.0,
        jwks_max_age: float = 3600.0,
    ) -> None:
        """Check the settings (https unless loopback) and prepare the HTTP clients.

        ``session`` carries TLS and proxy configuration (``verify``, ``cert``,
        ``proxies``, headers, mounted adapters); the authlib OAuth2Session that
        polls the token endpoint copies it. ``leeway`` is the clock skew, in
        seconds, allowed on exp/nbf/iat; ``timeout`` bounds every HTTP request;
        ``jwks_max_age`` bounds how long a fetched key set is trusted before it
        is fetched again (so a withdrawn key stops working).
        """
        if not settings.issuer or not settings.client_id:
            raise ConfigError(
                "the OpenID Connect issuer and client id must both be set",
                hint="set CARECLI_OIDC_ISSUER and CARECLI_OIDC_CLIENT_ID",
            )
        _require_secure_url(settings.issuer, "CARECLI_OIDC_ISSUER")
        self.settings = settings
        self.leeway = leeway
        self.timeout = timeout
        self.jwks_max_age = jwks_max_age
        self._http = session if session is not None else requests.Session()
        self._lock = threading.RLock()
        self._metadata: _ProviderMetadata | None = None
        self._jwks: KeySet | None = None
        self._jwks_fetched_at = 0.0

    # -- device authorization ------------------------------------------------

    def start_device_login(self, scope: str = "openid profile email") -> DeviceAuthorization:
        """Ask the provider for a device code and the user code to show (RFC 8628 section 3.1)."""
        metadata = self._provider_metadata()
        form = {"client_id": self.settings.client_id, "scope": scope, **self._target()}
        response = self._request("POST", metadata.device_authorization_endpoint, "device authorization", data=form)
        body = _json_object(response, "device authorization")
        if response.status_code != 200 or "error" in body:
            code = _error_code(body)
            if code == "invalid_target":
                raise self._invalid_target()
            raise LoginFailed(
                f"the identity provider refused to start a device sign-in ({code})",
                hint="check CARECLI_OIDC_CLIENT_ID and that the client allows the device code grant",
            )
        try:
            device_code = _required_str(body, "device_code")
            user_code = _required_str(body, "user_code")
            # Google's endpoint says verification_url; RFC 8628 says verification_uri.
            verification_uri = body.get("verification_uri") or body.get("verification_url")
            if not isinstance(verification_uri, str) or not verification_uri:
                raise ValueError("verification_uri")
            complete = body.get("verification_uri_complete")
            interval = _positive_int(body.get("interval", _DEFAULT_INTERVAL), "interval")
            expires_in = _positive_int(body.get("expires_in"), "expires_in")
        except ValueError as exc:
            raise ProviderUnavailable(
                f"the identity provider's device authorization answer lacks a valid '{exc}'"
            ) from None
        return DeviceAuthorization(
            device_code=device_code,
            user_code=user_code,
            verification_uri=verification_uri,
            verification_uri_complete=complete if isinstance(complete, str) and complete else None,
            interval=interval,
            expires_in=expires_in,
        )

    def wait_for_tokens(
        self,
        authorization: DeviceAuthorization,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_poll: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the token endpoint until the person approves; return the token response.

        Honours ``authorization_pending`` (keep polling), ``slow_down`` (poll
        5 s less often from now on), ``access_denied`` (LoginDenied) and
        ``expired_token`` (LoginExpired); the device code's own lifetime is
        also enforced locally. ``on_poll`` is called after every poll that did
        not end the wait, with ``"authorization_pending"``, ``"slow_down"`` or
        ``"retrying"`` (a transient network or server error, retried with
        backoff). ``sleep`` and ``clock`` are injectable so tests need not wait.
        """
        metadata = self._provider_metadata()
        # One OAuth session per wait: authlib keeps the last token on the
        # session object, and concurrent sign-ins (SSH host) must not share it.
        oauth = _oauth_session_like(self._http, self.settings.client_id, self.timeout)
        deadline = clock() + authorization.expires_in
        interval = authorization.interval
        failures = 0
        while True:
            delay = interval if failures == 0 else min(interval * 2**failures, _MAX_BACKOFF_SECONDS)
            if clock() + delay > deadline:
                raise _login_expired()
            sleep(delay)
            try:
                token = oauth.fetch_token(
                    metadata.token_endpoint,
                    grant_type=DEVICE_CODE_GRANT,
                    device_code=authorization.device_code,
                    timeout=self.timeout,
                    **self._target(),
                )
            except OAuthError as exc:
                failures = 0
                outcome = str(exc.error or "")
                if outcome == "authorization_pending":
                    pass
                elif outcome == "slow_down":
                    interval += _SLOW_DOWN_STEP
                elif outcome == "access_denied":
                    raise LoginDenied(
                        "the sign-in was declined at the identity provider",
                        hint="run `carecli login` again and approve the request",
                    ) from None
                elif outcome == "expired_token":
                    raise _login_expired() from None
                elif outcome == "invalid_target":
                    raise self._invalid_target() from None
                else:
                    # The code is the provider's registered error name; safe to show, no secret in it.
                    raise LoginFailed(
                        f"the identity provider ended the sign-in ({_safe_code(outcome)})",
                        hint="run `carecli login` again; if it keeps failing, check the OIDC client settings",
                    ) from None
            except (requests.RequestException, ValueError):
                # ValueError: authlib's answer to a body that is not a JSON object (a gateway page).
                # RFC 8628 section 3.5: back off on connection trouble instead of giving up at once.
                failures += 1
                outcome = "retrying"
                if failures >= _MAX_TRANSIENT_FAILURES:
                    raise ProviderUnavailable(
                        "the identity provider's token endpoint did not answer",
                        hint="check the network and CARECLI_OIDC_ISSUER, then run `carecli login` again",
                    ) from None
            else:
                tokens = dict(token)
                if not isinstance(tokens.get("access_token"), str):
                    raise ProviderUnavailable("the identity provider's token answer has no access token")
                return tokens
            if on_poll is not None:
                on_poll(outcome)

    def login(
        self,
        show: Callable[[DeviceAuthorization], object],
        *,
        scope: str = "openid profile email",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_poll: Callable[[str], None] | None = None,
    ) -> IdentityClaims:
        """Run a whole device sign-in and return the validated identity.

        Starts the device flow, hands the code to ``show`` (which displays it),
        waits for approval, then validates the ID token (audience = client id)
        and, when an audience is configured, the access token (audience = that
        audience, same subject).
        """
        authorization = self.start_device_login(scope)
        show(authorization)
        tokens = self.wait_for_tokens(authorization, sleep=sleep, clock=clock, on_poll=on_poll)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise TokenInvalid(
                "the identity provider returned no ID token",
                hint="the OIDC client must allow the 'openid' scope",
            )
        identity = self.validate_token(id_token, audience=self.settings.client_id, what="ID token")
        if self.settings.audience:
            access = self.validate_token(tokens["access_token"], audience=self.settings.audience, what="access token")
            if access.subject != identity.subject:
                raise TokenInvalid("the access token and the ID token name different people")
        return identity

    def _target(self) -> dict[str, str]:
        """The API the access token is for, as both the providers that take it ask for it.

        Auth0 issues a JWT access token for an API only when asked by its own
        ``audience`` parameter; a standards-following provider ignores that and
        reads RFC 8707's ``resource`` instead (and without it returns an opaque
        token, which cannot be checked here). Each ignores the other's, so both
        are sent, in the device authorization request and every token request.
        """
        if not self.settings.audience:
            return {}
        return {"audience": self.settings.audience, "resource": self.settings.audience}

    def _invalid_target(self) -> LoginFailed:
        """RFC 8707 ``invalid_target``: the provider knows no API by the configured audience."""
        return LoginFailed(
            f"the identity provider does not know the API CARECLI_OIDC_AUDIENCE names ({self.settings.audience}) "
            "(invalid_target)",
            hint="set CARECLI_OIDC_AUDIENCE to the API's identifier exactly as registered at the provider "
                 "(its resource indicator, an absolute URI), or unset it",
        )

    # -- token validation ----------------------------------------------------

    def validate_token(self, token: str, *, audience: str | None = None, what: str = "token") -> IdentityClaims:
        """Check a JWT from this issuer and return who it names.

        Signature by a key in the issuer's JWKS (cached; fetched again once
        when the token names a key id the cache lacks), algorithm in
        ALLOWED_ALGORITHMS, ``iss`` equal to the issuer, ``aud`` containing
        ``audience`` (default: the client id, as for an ID token), ``exp``
        required and in the future, ``nbf``/``iat`` not in the future (all with
        ``leeway``), ``sub`` present. ``what`` names the token in messages.
        Raises TokenInvalid naming the failed check, or ProviderUnavailable.
        """
        expected_audience = audience if audience is not None else self.settings.client_id
        header = _unverified_header(token, what)
        alg = header.get("alg")
        if alg == "none":
            raise TokenInvalid(f"the {what} is unsigned (alg 'none'); refusing it")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            shown = alg if isinstance(alg, str) and alg.isalnum() and len(alg) <= 10 else "unrecognised"
            raise TokenInvalid(
                f"the {what} is signed with algorithm {shown}, which is not allowed",
                hint=f"allowed: {', '.join(ALLOWED_ALGORITHMS)}",
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenInvalid(f"the {what} has a malformed key id")
        key = self._signing_key(kid, alg, what)
        metadata = self._provider_metadata()
        registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
        try:
            decoded = jwt.decode(token, key, algorithms=[alg], registry=registry)
        except BadSignatureError:
            raise TokenInvalid(f"the {what}'s signature does not verify") from None
        except JoseError:
            raise TokenInvalid(f"the {what} is malformed or its key does not fit its algorithm") from None
        claims = decoded.claims
        registry_claims = JWTClaimsRegistry(
            leeway=self.leeway,
            iss={"essential": True, "value": metadata.issuer},
            sub={"essential": True},
            aud={"essential": True, "value": expected_audience},
            exp={"essential": True},
        )
        try:
            registry_claims.validate(claims)
        except ExpiredTokenError:
            raise TokenInvalid(f"the {what} has expired", hint="run `carecli login` again") from None
        except MissingClaimError as exc:
            raise TokenInvalid(f"the {what} lacks required claims ({exc.claim})") from None
        except InvalidClaimError as exc:
            problem = _CLAIM_PROBLEMS.get(exc.claim, f"has an invalid '{exc.claim}' claim")
            raise TokenInvalid(f"the {what} {problem}") from None
        # OIDC Core 3.1.3.7: with several audiences, azp must name this client.
        azp = claims.get("azp")
        if expected_audience == self.settings.client_id and azp is not None and azp != self.settings.client_id:
            raise TokenInvalid(f"the {what} was issued to another client (azp)")
        return IdentityClaims(
            subject=claims["sub"],
            email=_optional_str(claims.get("email")),
            name=_optional_str(claims.get("name")),
            issuer=metadata.issuer,
        )

    # -- provider metadata and keys -------------------------------------------

    def _provider_metadata(self) -> _ProviderMetadata:
        with self._lock:
            if self._metadata is None:
                self._metadata = self._discover()
            return self._metadata

    def _discover(self) -> _ProviderMetadata:
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        response = self._request("GET", url, "discovery")
        if response.status_code != 200:
            raise ProviderUnavailable(
                f"the identity provider's discovery document answered HTTP {response.status_code}",
                hint="check CARECLI_OIDC_ISSUER",
            )
        document = _json_object(response, "discovery")
        issuer = document.get("issuer")
        # OIDC Discovery 4.3: the document must name the issuer we asked; a
        # trailing slash is the only difference tolerated (people type both).
        if not isinstance(issuer, str) or issuer.rstrip("/") != self.settings.issuer.rstrip("/"):
            raise ConfigError(
                "the identity provider's discovery document names a different issuer than CARECLI_OIDC_ISSUER",
                hint="set CARECLI_OIDC_ISSUER to the issuer exactly as the provider states it",
            )
        endpoints: dict[str, str] = {}
        for name in ("device_authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            if not isinstance(value, str) or not value:
                raise ProviderUnavailable(
                    f"the identity provider's discovery document has no {name}",
                    hint="the provider must support the device authorization grant (RFC 8628)",
                )
            _require_secure_url(value, name)
            endpoints[name] = value
        return _ProviderMetadata(issuer=issuer, **endpoints)

    def _signing_key(self, kid: str | None, alg: str, what: str) -> Key:
        with self._lock:
            fetched_now = False
            if self._jwks is None or time.monotonic() - self._jwks_fetched_at > self.jwks_max_age:
                self._jwks = self._fetch_jwks()
                fetched_now = True
            key = _find_key(self._jwks, kid, alg)
            if key is None and not fetched_now:
                # The provider may have rotated keys since we cached them: one
                # refetch, never a loop (a bogus kid must not hammer the provider).
                self._jwks = self._fetch_jwks()
                key = _find_key(self._jwks, kid, alg)
        if key is None:
            if kid is None:
                raise TokenInvalid(f"the {what} names no key id and the issuer publishes no single matching key")
            raise TokenInvalid(f"the {what} is signed by a key the issuer does not publish (unknown key id)")
        return key

    def _fetch_jwks(self) -> KeySet:
        metadata = self._provider_metadata()
        response = self._request("GET", metadata.jwks_uri, "key set (JWKS)")
        if response.status_code != 200:
            raise ProviderUnavailable(f"the identity provider's key set (JWKS) answered HTTP {response.status_code}")
        document = _json_object(response, "key set (JWKS)")
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise ProviderUnavailable("the identity provider's key set (JWKS) has no 'keys' list")
        # Only public signing keys of the allowed types; a malformed entry is
        # skipped rather than failing sign-in for the keys that are fine.
        usable: list[Key] = []
        for entry in keys:
            if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
                usable.append((RSAKey if entry["kty"] == "RSA" else ECKey).import_key(public))
            except (JoseError, ValueError, TypeError, KeyError):
                continue
        self._jwks_fetched_at = time.monotonic()
        return KeySet(usable)

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        if isinstance(self._http, OAuth2Session):
            # Otherwise authlib refuses to send a request without a bearer token.
            kwargs["withhold_token"] = True
        try:
            return self._http.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs)
        except requests.RequestException:
            # The exception text may carry the URL; it holds no secret, but the
            # cause chain is dropped anyway so nothing of the request leaks.
            raise ProviderUnavailable(
                f"could not reach the identity provider ({what})",
                hint="check the network and CARECLI_OIDC_ISSUER",
            ) from None


_CLAIM_PROBLEMS = {
    "iss": "was issued by a different issuer",
    "aud": "is meant for a different audience",
    "nbf": "is not valid yet",
    "iat": "was issued in the future",
    "sub": "has an invalid subject",
    "exp": "has an invalid expiry",
}


def _find_key(keys: KeySet, kid: str | None, alg: str) -> Key | None:
    key_type = _KEY_TYPE_FOR_ALG[alg]
    if kid is not None:
        matching = [key for key in keys if key.kid == kid]
    else:
        # No kid: acceptable only when exactly one published key could have signed.
        matching = [key for key in keys if key.key_type == key_type and key.get("alg") in (None, alg)]
        if len(matching) != 1:
            return None
    return matching[0] if matching else None


def _unverified_header(token: str, what: str) -> dict[str, Any]:
    """The JOSE header, read before verification only to pick the key and check the algorithm."""
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
        raise TokenInvalid(f"the {what} is empty or too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid(f"the {what} is not a signed JWT (expected three dot-separated parts)")
    try:
        segment = parts[0]
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError):
        raise TokenInvalid(f"the {what}'s header is not valid base64url JSON") from None
    if not isinstance(header, dict):
        raise TokenInvalid(f"the {what}'s header is not a JSON object")
    return header


def _oauth_session_like(http: requests.Session, client_id: str, timeout: float) -> OAuth2Session:
    """A fresh authlib OAuth2Session for the token endpoint, with ``http``'s TLS, proxy and header setup."""
    # token_endpoint_auth_method "none": carecli is a public client (RFC 8628
    # devices cannot keep a secret); authlib then sends client_id in the body.
    oauth = OAuth2Session(client_id=client_id, token_endpoint_auth_method="none", default_timeout=timeout)
    oauth.verify = http.verify
    oauth.cert = http.cert
    oauth.proxies = dict(http.proxies)
    oauth.trust_env = http.trust_env
    oauth.headers.update(http.headers)
    for prefix, adapter in http.adapters.items():
        oauth.mount(prefix, adapter)
    return oauth


def _require_secure_url(url: str, name: str) -> None:
    """https everywhere, except plain http to this machine (development and tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return
    raise ConfigError(
        f"{name} must be an https URL (plain http is accepted only for 127.0.0.1/localhost)",
        hint="tokens and keys fetched over plain http could be swapped in transit",
    )


def _json_object(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ProviderUnavailable(
            f"the identity provider's {what} answer is not JSON (HTTP {response.status_code})",
            hint="check CARECLI_OIDC_ISSUER",
        )
    return body


def _error_code(body: Mapping[str, Any]) -> str:
    return _safe_code(body.get("error"))


def _safe_code(value: object) -> str:
    # OAuth error codes are short ASCII names; anything else is not echoed.
    if isinstance(value, str) and 0 < len(value) <= 64 and all(c.isalnum() or c == "_" for c in value):
        return value
    return "unrecognised error"


def _required_str(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(name)
    return value


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(name)
    return int(value)


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _login_expired() -> LoginExpired:
    return LoginExpired(
        "the sign-in code expired before it was approved",
        hint="run `carecli login` again and approve the request sooner",
    )
