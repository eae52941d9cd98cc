"""A small, real OpenID Connect provider for tests: HTTP on 127.0.0.1, RS256 tokens, a JWKS, device codes.

No HTTP mocking: carecli's OIDC client talks to this server over a socket
exactly as it would to Auth0 or Okta. The test drives the person's side
through methods (``approve``, ``deny``, ``expire``) and shapes the provider's
behaviour (``force_slow_down``, ``fail_token_requests``, ``rotate_keys``);
``make_token`` crafts tokens for the validation checks (wrong audience,
expired, ``alg: none``, unknown key id, foreign signature...).

Two ways of choosing the access token's audience: Auth0's (the default), which
reads the non-standard ``audience`` parameter, and RFC 8707's
(``OidcProvider(resource_indicators=True)``, as certified OpenID providers do),
which ignores ``audience``, reads ``resource``, answers ``invalid_target`` for a
resource it does not know (``.resources``) and, without a resource, issues an
opaque access token rather than a JWT.

The ``oidc_provider`` fixture is registered for the whole suite (``pytest_plugins``
in tests/conftest.py): a test takes a parameter named ``oidc_provider``. Endpoints:
``/.well-known/openid-configuration``, ``/jwks``, ``/oauth/device/code``,
``/oauth/token`` (device-code grant only). Every request's path is appended
to ``.requests``, so a test can count JWKS fetches.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no accidental words, no 0/O or 1/I confusion
_UNSET: Any = object()


@functools.cache
def _initial_rsa_key() -> RSAKey:
    # One per test process: generating RSA keys costs ~70 ms each, and sharing
    # the starting key between provider instances changes nothing a test checks.
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-initial", "use": "sig"}, private=True)


@functools.cache
def _initial_ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-initial", "use": "sig"}, private=True)


@dataclass
class DeviceGrant:
    """One device authorization as the provider tracks it."""

    device_code: str
    user_code: str
    client_id: str
    scope: str
    audience: str | None
    expires_at: float
    state: str = "pending"  # pending | approved | denied | expired | used
    subject: str | None = None
    email: str | None = None
    name: str | None = None
    id_token_claims: dict[str, Any] = field(default_factory=dict)
    access_token_claims: dict[str, Any] = field(default_factory=dict)


class OidcProvider:
    """A running test provider; use as a context manager or via the ``oidc_provider`` fixture."""

    def __init__(
        self,
        *,
        client_id: str = "carecli-test-client",
        audience: str | None = "https://api.carecli.test",
        interval: int = 1,
        expires_in: int = 600,
        resource_indicators: bool = False,
    ) -> None:
        self.client_id = client_id
        self.audience = audience
        #: RFC 8707 mode: ``resource`` names the access token's audience and ``audience`` is ignored
        self.resource_indicators = resource_indicators
        #: the resources (APIs) an RFC 8707 provider issues tokens for; another one is ``invalid_target``
        self.resources: set[str] = {audience} if audience else set()
        #: polling interval and device code lifetime announced to clients (changeable between logins)
        self.interval = interval
        self.expires_in = expires_in
        #: the path of every request received, in order (e.g. ``requests.count("/jwks")``)
        self.requests: list[str] = []
        #: the form of every device authorization request (to check scope/audience sent)
        self.device_requests: list[dict[str, str]] = []
        #: the form of every token request, device code removed (to check audience/resource sent)
        self.token_requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._grants: dict[str, DeviceGrant] = {}
        self._slow_downs = 0
        self._failures = 0
        self._rsa_key = _initial_rsa_key()
        self._ec_key = _initial_ec_key()
        self._published: list[RSAKey | ECKey] = [self._rsa_key, self._ec_key]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> OidcProvider:
        """Serve requests in a background thread."""
        # A short poll interval: shutdown() waits for it, and every test stops a provider.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="oidc-provider", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what the test controls --------------------------------------------------

    @property
    def signing_kid(self) -> str:
        """The key id new RS256 tokens carry."""
        return str(self._rsa_key.kid)

    def approve(
        self,
        user_code: str,
        subject: str,
        *,
        email: str | None = None,
        name: str | None = None,
        id_token_claims: Mapping[str, Any] | None = None,
        access_token_claims: Mapping[str, Any] | None = None,
    ) -> None:
        """The person signs in as ``subject`` and approves ``user_code``.

        ``id_token_claims`` / ``access_token_claims`` override claims of the
        tokens the next successful poll receives (a value of None removes the
        claim), e.g. ``id_token_claims={"aud": "someone-else"}``.
        """
        with self._lock:
            grant = self._grant(user_code)
            grant.state = "approved"
            grant.subject, grant.email, grant.name = subject, email, name
            grant.id_token_claims = dict(id_token_claims or {})
            grant.access_token_claims = dict(access_token_claims or {})

    def deny(self, user_code: str) -> None:
        """The person declines the request: the next poll gets ``access_denied``."""
        with self._lock:
            self._grant(user_code).state = "denied"

    def expire(self, code: str) -> None:
        """The device code (given by device code or user code) expires: polls get ``expired_token``."""
        with self._lock:
            self._grant(code).state = "expired"

    def force_slow_down(self, n: int = 1) -> None:
        """The next ``n`` polls of a live device code answer ``slow_down``."""
        with self._lock:
            self._slow_downs = n

    def fail_token_requests(self, n: int = 1) -> None:
        """The next ``n`` token endpoint requests answer 503 with an HTML page (an outage)."""
        with self._lock:
            self._failures = n

    def rotate_keys(self, *, keep_previous: bool = True) -> str:
        """Sign with a new RSA key from now on; publish it (and the old one when ``keep_previous``).

        Returns the new key id.
        """
        kid = f"rsa-{secrets.token_hex(4)}"
        key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"}, private=True)
        with self._lock:
            if not keep_previous:
                self._published.remove(self._rsa_key)
            self._rsa_key = key
            self._published.insert(0, key)
        return kid

    def jwks(self) -> dict[str, Any]:
        """The public key set served at ``/jwks``."""
        with self._lock:
            return {"keys": [key.as_dict(private=False) for key in self._published]}

    def make_token(
        self,
        *,
        alg: str = "RS256",
        kid: str | None = _UNSET,
        unpublished_key: bool = False,
        header: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A JWT from this issuer; keyword arguments override claims (None removes one).

        Defaults: ``iss`` this issuer, ``sub`` "user-1", ``aud`` the client id,
        ``iat`` now, ``exp`` in an hour, ``email``, ``name``. ``alg`` picks the
        signature: RS256/RS384/RS512/PS256 with the current RSA key, ES256 with
        the EC key, HS256 with the RSA *public* key as the HMAC secret (the
        algorithm-confusion attack), "none" for an unsigned token. ``kid``
        overrides the header's key id (None leaves it out); ``unpublished_key``
        signs with a fresh RSA key the JWKS does not contain while keeping the
        published key id (a forged signature). ``header`` adds header fields.
        """
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "user-1",
            "aud": self.client_id,
            "iat": now,
            "exp": now + 3600,
            "email": "user-1@example.test",
            "name": "User One",
        }
        body.update(claims)
        body = {name: value for name, value in body.items() if value is not None}
        with self._lock:
            rsa_key, ec_key = self._rsa_key, self._ec_key
        signing_key: RSAKey | ECKey = ec_key if alg.startswith("ES") else rsa_key
        head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        chosen_kid = signing_key.kid if kid is _UNSET else kid
        if chosen_kid is not None:
            head["kid"] = chosen_kid
        head.update(header or {})
        if alg == "none":
            return _compact(head, body, lambda _: b"")
        if alg.startswith("HS"):
            secret = rsa_key.get_op_key("verify").public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            digest = getattr(hashlib, f"sha{alg[2:]}")
            return _compact(head, body, lambda data: hmac.new(secret, data, digest).digest())
        if unpublished_key:
            signing_key = RSAKey.generate_key(2048, private=True)
        return jwt.encode(head, body, signing_key, algorithms=[alg])

    # -- request handling (called from the server thread) -----------------------

    def _grant(self, code: str) -> DeviceGrant:
        if code in self._grants:
            return self._grants[code]
        wanted = _normalise_user_code(code)
        for grant in self._grants.values():
            if _normalise_user_code(grant.user_code) == wanted:
                return grant
        raise KeyError("no such device code or user code")

    def _discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "token_endpoint": f"{self.issuer}/oauth/token",
            "device_authorization_endpoint": f"{self.issuer}/oauth/device/code",
            "grant_types_supported": [DEVICE_CODE_GRANT],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": ["openid", "profile", "email"],
        }

    def _device_code(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.device_requests.append(form)
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client"}
        if self.resource_indicators:
            audience = form.get("resource")
            if audience is not None and audience not in self.resources:
                return 400, _invalid_target()
        else:
            audience = form.get("audience")
        user_code = "-".join(
            "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(4)) for _ in range(2)
        )
        grant = DeviceGrant(
            device_code=secrets.token_urlsafe(32),
            user_code=user_code,
            client_id=form["client_id"],
            scope=form.get("scope", ""),
            audience=audience,
            expires_at=time.monotonic() + self.expires_in,
        )
        with self._lock:
            self._grants[grant.device_code] = grant
        return 200, {
            "device_code": grant.device_code,
            "user_code": user_code,
            "verification_uri": f"{self.issuer}/activate",
            "verification_uri_complete": f"{self.issuer}/activate?user_code={user_code}",
            "expires_in": self.expires_in,
            "interval": self.interval,
        }

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any] | str]:
        with self._lock:
            self.token_requests.append({name: value for name, value in form.items() if name != "device_code"})
            if self._failures > 0:
                self._failures -= 1
                return 503, "<html><body>Service Unavailable</body></html>"
            if form.get("grant_type") != DEVICE_CODE_GRANT:
                return 400, {"error": "unsupported_grant_type"}
            grant = self._grants.get(form.get("device_code", ""))
            if grant is None or grant.client_id != form.get("client_id") or grant.state == "used":
                return 400, {"error": "invalid_grant"}
            if grant.state == "pending" and time.monotonic() > grant.expires_at:
                grant.state = "expired"
            if grant.state == "expired":
                return 400, {"error": "expired_token"}
            if self._slow_downs > 0:
                self._slow_downs -= 1
                return 400, {"error": "slow_down"}
            if grant.state == "denied":
                return 400, {"error": "access_denied", "error_description": "The user denied the request"}
            if self.resource_indicators and not self._resource_fits(grant, form.get("resource")):
                return 400, _invalid_target()
            if grant.state == "pending":
                return 400, {"error": "authorization_pending"}
            grant.state = "used"
        identity = {"sub": grant.subject, "email": grant.email, "name": grant.name}
        id_token = self.make_token(**{**identity, "aud": self.client_id, **grant.id_token_claims})
        access_claims: dict[str, Any] = {
            "sub": grant.subject,
            "aud": [grant.audience, f"{self.issuer}/userinfo"] if grant.audience else self.client_id,
            "scope": grant.scope,
            "azp": self.client_id,
            "email": None,
            "name": None,
        }
        if self.resource_indicators and not grant.audience:
            # RFC 8707 without a resource: a token for the userinfo endpoint only, opaque to the client.
            access_token = secrets.token_urlsafe(32)
        else:
            access_token = self.make_token(**{**access_claims, **grant.access_token_claims})
        return 200, {
            "access_token": access_token,
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": grant.scope,
        }


    def _resource_fits(self, grant: DeviceGrant, resource: str | None) -> bool:
        """RFC 8707 section 2.2: a token request's resource must be known and the one that was authorised."""
        if resource is None:
            return True
        return resource in self.resources and resource == grant.audience


def _invalid_target() -> dict[str, str]:
    return {"error": "invalid_target", "error_description": "The requested resource is not known"}


def _make_handler(provider: OidcProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "carecli-test-oidc/1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = urlsplit(self.path).path
            with provider._lock:
                provider.requests.append(path)
            if path == "/.well-known/openid-configuration":
                self._send(200, provider._discovery())
            elif path == "/jwks":
                self._send(200, provider.jwks())
            else:
                self._send(404, {"error": "not_found"})

        def do_POST(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            with provider._lock:
                provider.requests.append(path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8")
            form = {name: values[-1] for name, values in parse_qs(raw).items()}
            if path == "/oauth/device/code":
                self._send(*provider._device_code(form))
            elif path == "/oauth/token":
                self._send(*provider._token(form))
            else:
                self._send(404, {"error": "not_found"})

        def _send(self, status: int, body: dict[str, Any] | str) -> None:
            if isinstance(body, str):
                data, content_type = body.encode(), "text/html"
            else:
                data, content_type = json.dumps(body).encode(), "application/json"
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            # Quiet: pytest output stays readable, and request lines could carry codes.
            pass

    return Handler


def _normalise_user_code(code: str) -> str:
    return code.replace("-", "").replace(" ", "").upper()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact(header: Mapping[str, Any], claims: Mapping[str, Any], sign: Any) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode('ascii')))}"


@pytest.fixture
def oidc_provider() -> Iterator[OidcProvider]:
    """A fresh provider on 127.0.0.1:<free port> for one test."""
    with OidcProvider() as provider:
        yield provider
