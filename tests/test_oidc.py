"""OIDC device sign-in and token validation against a real provider on 127.0.0.1 (tests/oidc_provider.py).

The provider is a real HTTP server; only time is faked: ``wait_for_tokens``
gets a sleep that advances a fake clock, so polling at the provider's 1 s
interval costs nothing. The person's side (approve, deny, expire) is driven
from ``on_poll``, which runs between polls.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from carecli.errors import EXIT_AUTH, AuthError, ConfigError
from carecli.services.auth.oidc import (
    DeviceAuthorization,
    IdentityClaims,
    LoginDenied,
    LoginExpired,
    LoginFailed,
    OidcClient,
    OidcSettings,
    ProviderUnavailable,
    TokenInvalid,
)
from tests.oidc_provider import OidcProvider


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def client_for(provider: OidcProvider, **kwargs: Any) -> OidcClient:
    return OidcClient(OidcSettings(provider.issuer, provider.client_id, provider.audience), **kwargs)


def run_login(
    client: OidcClient,
    fake: FakeTime,
    on_poll: Callable[[str, DeviceAuthorization], None],
) -> tuple[IdentityClaims, list[str], DeviceAuthorization]:
    """Run client.login, calling ``on_poll(outcome, authorization)`` between polls."""
    shown: list[DeviceAuthorization] = []
    outcomes: list[str] = []

    def poll(outcome: str) -> None:
        outcomes.append(outcome)
        on_poll(outcome, shown[0])

    identity = client.login(shown.append, sleep=fake.sleep, clock=fake.clock, on_poll=poll)
    return identity, outcomes, shown[0]


# -- the device flow -------------------------------------------------------------


def test_successful_login_returns_the_validated_identity(oidc_provider: OidcProvider) -> None:
    fake = FakeTime()

    def approve(outcome: str, authorization: DeviceAuthorization) -> None:
        oidc_provider.approve(authorization.user_code, "auth0|alice", email="alice@example.test", name="Alice Ng")

    identity, outcomes, shown = run_login(client_for(oidc_provider), fake, approve)

    assert identity == IdentityClaims(
        subject="auth0|alice", email="alice@example.test", name="Alice Ng", issuer=oidc_provider.issuer
    )
    assert outcomes == ["authorization_pending"]
    assert fake.sleeps == [1, 1]  # the provider's interval, before each poll
    assert shown.verification_uri == f"{oidc_provider.issuer}/activate"
    assert shown.verification_uri_complete and shown.user_code in shown.verification_uri_complete
    assert shown.device_code not in repr(shown)  # the device code is a credential
    # carecli asked for an OIDC scope and for a JWT access token for its API.
    request = oidc_provider.device_requests[0]
    assert request["scope"] == "openid profile email"
    assert request["audience"] == request["resource"] == oidc_provider.audience
    assert all(form["audience"] == form["resource"] == oidc_provider.audience
               for form in oidc_provider.token_requests)


# -- RFC 8707 resource indicators (a certified provider, not Auth0) ---------------------------------


@pytest.fixture
def rfc8707_provider() -> Iterator[OidcProvider]:
    """The test provider choosing the access token's audience by RFC 8707 ``resource``, ignoring ``audience``."""
    with OidcProvider(resource_indicators=True) as provider:
        yield provider


def test_the_rfc8707_provider_ignores_audience_and_gives_an_opaque_token_without_resource(
        rfc8707_provider: OidcProvider) -> None:
    """What carecli used to meet: asked by ``audience`` alone, such a provider issues no JWT access token."""
    issuer = rfc8707_provider.issuer
    started = requests.post(f"{issuer}/oauth/device/code", timeout=10, data={
        "client_id": rfc8707_provider.client_id, "scope": "openid", "audience": rfc8707_provider.audience}).json()
    rfc8707_provider.approve(started["user_code"], "sub-1")
    tokens = requests.post(f"{issuer}/oauth/token", timeout=10, data={
        "client_id": rfc8707_provider.client_id, "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": started["device_code"], "audience": rfc8707_provider.audience}).json()
    assert tokens["access_token"].count(".") != 2  # opaque, not a JWT
    # carecli's own ID token check is unaffected; the access token cannot be checked at all.
    client = client_for(rfc8707_provider)
    with pytest.raises(TokenInvalid, match="the access token is not a signed JWT"):
        client.validate_token(tokens["access_token"], audience=rfc8707_provider.audience, what="access token")


def test_sign_in_against_an_rfc8707_provider_gets_a_jwt_access_token_for_the_audience(
        rfc8707_provider: OidcProvider) -> None:
    fake = FakeTime()

    def approve(outcome: str, authorization: DeviceAuthorization) -> None:
        rfc8707_provider.approve(authorization.user_code, "sub-8707", email="ana@example.test")

    identity, _outcomes, _shown = run_login(client_for(rfc8707_provider), fake, approve)

    assert identity.subject == "sub-8707"
    assert rfc8707_provider.device_requests[0]["resource"] == rfc8707_provider.audience
    assert [form["resource"] for form in rfc8707_provider.token_requests] == [rfc8707_provider.audience] * 2


def test_an_audience_the_provider_does_not_know_is_invalid_target_naming_the_setting(
        rfc8707_provider: OidcProvider) -> None:
    """Refused at the device authorization request: the hint is about CARECLI_OIDC_AUDIENCE, not the client id."""
    settings = OidcSettings(rfc8707_provider.issuer, rfc8707_provider.client_id, "https://other-api.example.test")
    with pytest.raises(LoginFailed) as caught:
        OidcClient(settings).start_device_login()
    assert caught.value.exit_code == EXIT_AUTH
    assert "invalid_target" in caught.value.message
    assert "https://other-api.example.test" in caught.value.message
    assert caught.value.hint is not None and "CARECLI_OIDC_AUDIENCE" in caught.value.hint
    assert "CLIENT_ID" not in str(caught.value)


def test_invalid_target_at_the_token_endpoint_names_the_setting_too(rfc8707_provider: OidcProvider) -> None:
    """The provider stops knowing the API between the start and the approval: the poll's error says so."""
    client = client_for(rfc8707_provider)
    authorization = client.start_device_login()
    rfc8707_provider.resources.clear()
    rfc8707_provider.approve(authorization.user_code, "sub-1")
    with pytest.raises(LoginFailed) as caught:
        client.wait_for_tokens(authorization, sleep=FakeTime().sleep)
    assert "invalid_target" in caught.value.message
    assert caught.value.hint is not None and "CARECLI_OIDC_AUDIENCE" in caught.value.hint
    assert "CLIENT_ID" not in str(caught.value)


def test_wait_for_tokens_returns_the_token_response(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider)
    authorization = client.start_device_login()
    oidc_provider.approve(authorization.user_code, "sub-1")
    tokens = client.wait_for_tokens(authorization, sleep=FakeTime().sleep)
    assert tokens["token_type"] == "Bearer"
    assert {"access_token", "id_token"} <= tokens.keys()
    assert client.validate_token(tokens["access_token"], audience=oidc_provider.audience).subject == "sub-1"


def test_pending_then_slow_down_adds_five_seconds_to_every_later_poll(oidc_provider: OidcProvider) -> None:
    fake = FakeTime()
    slowed = False

    def drive(outcome: str, authorization: DeviceAuthorization) -> None:
        nonlocal slowed
        if outcome == "authorization_pending" and not slowed:
            slowed = True
            oidc_provider.force_slow_down(1)
        elif outcome == "authorization_pending":
            oidc_provider.approve(authorization.user_code, "sub-2")

    identity, outcomes, _ = run_login(client_for(oidc_provider), fake, drive)

    assert identity.subject == "sub-2"
    assert outcomes == ["authorization_pending", "slow_down", "authorization_pending"]
    assert fake.sleeps == [1, 1, 6, 6]  # RFC 8628 3.5: +5 s for this and all later polls


def test_expired_device_code_ends_the_login(oidc_provider: OidcProvider) -> None:
    def expire(outcome: str, authorization: DeviceAuthorization) -> None:
        oidc_provider.expire(authorization.user_code)

    with pytest.raises(LoginExpired) as caught:
        run_login(client_for(oidc_provider), FakeTime(), expire)
    assert caught.value.exit_code == EXIT_AUTH
    assert "expired" in str(caught.value)


def test_device_code_lifetime_is_also_enforced_locally(oidc_provider: OidcProvider) -> None:
    # The provider never says expired_token here; carecli stops by itself.
    oidc_provider.expires_in = 3
    fake = FakeTime()
    with pytest.raises(LoginExpired):
        run_login(client_for(oidc_provider), fake, lambda outcome, authorization: None)
    assert sum(fake.sleeps) <= 3
    assert oidc_provider.requests.count("/oauth/token") == 3


def test_denied_login(oidc_provider: OidcProvider) -> None:
    def deny(outcome: str, authorization: DeviceAuthorization) -> None:
        oidc_provider.deny(authorization.user_code)

    with pytest.raises(LoginDenied) as caught:
        run_login(client_for(oidc_provider), FakeTime(), deny)
    assert isinstance(caught.value, AuthError)
    assert caught.value.exit_code == EXIT_AUTH
    assert "declined" in str(caught.value)


def test_transient_outage_while_polling_is_retried_with_backoff(oidc_provider: OidcProvider) -> None:
    fake = FakeTime()
    client = client_for(oidc_provider)
    authorization = client.start_device_login()
    oidc_provider.approve(authorization.user_code, "sub-3")
    oidc_provider.fail_token_requests(2)
    outcomes: list[str] = []
    tokens = client.wait_for_tokens(authorization, sleep=fake.sleep, clock=fake.clock, on_poll=outcomes.append)
    assert "id_token" in tokens
    assert outcomes == ["retrying", "retrying"]
    assert fake.sleeps == [1, 2, 4]


def test_lasting_outage_while_polling_is_provider_unavailable(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider)
    authorization = client.start_device_login()
    oidc_provider.fail_token_requests(10)
    with pytest.raises(ProviderUnavailable):
        client.wait_for_tokens(authorization, sleep=FakeTime().sleep)
    assert oidc_provider.requests.count("/oauth/token") == 3


def test_unknown_client_id_is_refused_at_the_start(oidc_provider: OidcProvider) -> None:
    client = OidcClient(OidcSettings(oidc_provider.issuer, "not-registered", None))
    with pytest.raises(LoginFailed, match="invalid_client"):
        client.start_device_login()


def test_unreachable_provider() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OidcClient(OidcSettings(f"http://127.0.0.1:{port}", "client", None), timeout=2)
    with pytest.raises(ProviderUnavailable) as caught:
        client.start_device_login()
    assert caught.value.exit_code == EXIT_AUTH


# -- token validation ---------------------------------------------------------------


def test_id_token_with_wrong_audience_fails_login(oidc_provider: OidcProvider) -> None:
    def approve(outcome: str, authorization: DeviceAuthorization) -> None:
        oidc_provider.approve(authorization.user_code, "sub-4", id_token_claims={"aud": "another-app"})

    with pytest.raises(TokenInvalid, match="ID token is meant for a different audience"):
        run_login(client_for(oidc_provider), FakeTime(), approve)


def test_access_token_for_another_api_fails_login(oidc_provider: OidcProvider) -> None:
    def approve(outcome: str, authorization: DeviceAuthorization) -> None:
        oidc_provider.approve(authorization.user_code, "sub-5", access_token_claims={"aud": "https://other.api"})

    with pytest.raises(TokenInvalid, match="access token is meant for a different audience"):
        run_login(client_for(oidc_provider), FakeTime(), approve)


def test_access_token_for_another_person_fails_login(oidc_provider: OidcProvider) -> None:
    def approve(outcome: str, authorization: DeviceAuthorization) -> None:
        oidc_provider.approve(authorization.user_code, "sub-6", access_token_claims={"sub": "someone-else"})

    with pytest.raises(TokenInvalid, match="different people"):
        run_login(client_for(oidc_provider), FakeTime(), approve)


def test_expired_id_token_fails_login(oidc_provider: OidcProvider) -> None:
    long_ago = int(time.time()) - 3600

    def approve(outcome: str, authorization: DeviceAuthorization) -> None:
        oidc_provider.approve(authorization.user_code, "sub-7", id_token_claims={"iat": long_ago, "exp": long_ago + 60})

    with pytest.raises(TokenInvalid, match="ID token has expired"):
        run_login(client_for(oidc_provider), FakeTime(), approve)


def test_audience_defaults_to_the_client_id(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider)
    assert client.validate_token(oidc_provider.make_token()).subject == "user-1"
    with pytest.raises(TokenInvalid, match="different audience"):
        client.validate_token(oidc_provider.make_token(aud="another-app"))
    # A list audience is fine when it contains ours.
    assert client.validate_token(oidc_provider.make_token(aud=["x", oidc_provider.client_id]))


def test_expiry_has_a_small_leeway(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider, leeway=60)
    now = int(time.time())
    assert client.validate_token(oidc_provider.make_token(exp=now - 30))  # clock skew tolerated
    with pytest.raises(TokenInvalid, match="expired"):
        client.validate_token(oidc_provider.make_token(exp=now - 120))
    with pytest.raises(TokenInvalid, match="lacks required claims \\(exp\\)"):
        client.validate_token(oidc_provider.make_token(exp=None))


def test_not_yet_valid_and_issued_in_the_future(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider)
    later = int(time.time()) + 600
    with pytest.raises(TokenInvalid, match="not valid yet"):
        client.validate_token(oidc_provider.make_token(nbf=later))
    with pytest.raises(TokenInvalid, match="issued in the future"):
        client.validate_token(oidc_provider.make_token(iat=later))


def test_alg_none_is_refused(oidc_provider: OidcProvider) -> None:
    with pytest.raises(TokenInvalid, match="alg 'none'"):
        client_for(oidc_provider).validate_token(oidc_provider.make_token(alg="none"))


def test_hmac_with_the_public_key_is_refused(oidc_provider: OidcProvider) -> None:
    # The RS256 -> HS256 confusion: the public key used as an HMAC secret.
    with pytest.raises(TokenInvalid, match="HS256, which is not allowed"):
        client_for(oidc_provider).validate_token(oidc_provider.make_token(alg="HS256"))


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "ES256"])
def test_allowed_algorithms(oidc_provider: OidcProvider, alg: str) -> None:
    assert client_for(oidc_provider).validate_token(oidc_provider.make_token(alg=alg)).subject == "user-1"


def test_forged_signature_and_tampered_payload(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider)
    with pytest.raises(TokenInvalid, match="signature does not verify"):
        client.validate_token(oidc_provider.make_token(unpublished_key=True))
    header, _, signature = oidc_provider.make_token(sub="alice").split(".")
    other_payload = oidc_provider.make_token(sub="mallory").split(".")[1]
    with pytest.raises(TokenInvalid, match="signature does not verify"):
        client.validate_token(f"{header}.{other_payload}.{signature}")


def test_wrong_issuer_and_missing_subject(oidc_provider: OidcProvider) -> None:
    # Token-level identity checks; mapping a valid subject to a carecli user is the sessions side's.
    client = client_for(oidc_provider)
    with pytest.raises(TokenInvalid, match="different issuer"):
        client.validate_token(oidc_provider.make_token(iss="https://evil.example"))
    with pytest.raises(TokenInvalid, match="lacks required claims \\(sub\\)"):
        client.validate_token(oidc_provider.make_token(sub=None))
    with pytest.raises(TokenInvalid, match="invalid subject"):
        client.validate_token(oidc_provider.make_token(sub=""))


def test_id_token_for_another_client_is_refused_by_azp(oidc_provider: OidcProvider) -> None:
    token = oidc_provider.make_token(aud=[oidc_provider.client_id, "other-client"], azp="other-client")
    with pytest.raises(TokenInvalid, match="another client"):
        client_for(oidc_provider).validate_token(token)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b", "!!!.e30.sig", "e30.e30.sig", "a.b.c.d.e"])
def test_malformed_tokens(oidc_provider: OidcProvider, garbage: str) -> None:
    with pytest.raises(TokenInvalid):
        client_for(oidc_provider).validate_token(garbage)


def test_error_messages_never_contain_the_token(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider)
    now = int(time.time())
    bad = [
        oidc_provider.make_token(aud="x"),
        oidc_provider.make_token(exp=now - 999),
        oidc_provider.make_token(alg="none"),
        oidc_provider.make_token(kid="unknown"),
        oidc_provider.make_token(unpublished_key=True),
        oidc_provider.make_token(iss="https://evil.example"),
    ]
    for token in bad:
        with pytest.raises(TokenInvalid) as caught:
            client.validate_token(token)
        text = str(caught.value) + repr(caught.value.args)
        for part in token.split("."):
            assert not part or part not in text
        assert caught.value.__cause__ is None  # nothing of the token rides along in a chained exception


# -- keys --------------------------------------------------------------------------------


def test_jwks_is_cached(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider)
    for _ in range(3):
        client.validate_token(oidc_provider.make_token())
    assert oidc_provider.requests.count("/jwks") == 1
    assert oidc_provider.requests.count("/.well-known/openid-configuration") == 1


def test_rotated_key_triggers_exactly_one_jwks_refetch(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider)
    client.validate_token(oidc_provider.make_token())
    assert oidc_provider.requests.count("/jwks") == 1

    new_kid = oidc_provider.rotate_keys()
    token = oidc_provider.make_token()
    assert new_kid in oidc_provider.jwks().__repr__()
    assert client.validate_token(token).subject == "user-1"
    assert oidc_provider.requests.count("/jwks") == 2
    client.validate_token(token)  # the new key is cached now
    assert oidc_provider.requests.count("/jwks") == 2


def test_unknown_kid_refetches_once_then_fails(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider)
    client.validate_token(oidc_provider.make_token())
    with pytest.raises(TokenInvalid, match="unknown key id"):
        client.validate_token(oidc_provider.make_token(kid="no-such-key"))
    assert oidc_provider.requests.count("/jwks") == 2


def test_unknown_kid_on_a_cold_cache_fetches_once(oidc_provider: OidcProvider) -> None:
    with pytest.raises(TokenInvalid, match="unknown key id"):
        client_for(oidc_provider).validate_token(oidc_provider.make_token(kid="no-such-key"))
    assert oidc_provider.requests.count("/jwks") == 1


def test_withdrawn_key_stops_working_once_the_cache_ages(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider, jwks_max_age=0)
    old_token = oidc_provider.make_token()
    client.validate_token(old_token)
    oidc_provider.rotate_keys(keep_previous=False)
    with pytest.raises(TokenInvalid, match="unknown key id"):
        client.validate_token(old_token)


def test_token_without_kid_uses_the_single_matching_key(oidc_provider: OidcProvider) -> None:
    client = client_for(oidc_provider)
    # The provider publishes one RSA and one EC key: exactly one can check RS256.
    assert client.validate_token(oidc_provider.make_token(kid=None)).subject == "user-1"
    oidc_provider.rotate_keys()  # now two RSA keys: ambiguous without a kid
    with pytest.raises(TokenInvalid, match="names no key id"):
        client_for(oidc_provider).validate_token(oidc_provider.make_token(kid=None))


# -- configuration -----------------------------------------------------------------------


def test_plain_http_is_refused_except_for_loopback() -> None:
    with pytest.raises(ConfigError, match="https"):
        OidcClient(OidcSettings("http://idp.example.com", "client", None))
    OidcClient(OidcSettings("https://idp.example.com/", "client", None))
    OidcClient(OidcSettings("http://localhost:8080", "client", None))


def test_discovery_must_name_the_configured_issuer(oidc_provider: OidcProvider) -> None:
    # A trailing slash is tolerated; another name for the same host is not.
    slash = OidcClient(OidcSettings(oidc_provider.issuer + "/", oidc_provider.client_id, None))
    assert slash.validate_token(oidc_provider.make_token()).issuer == oidc_provider.issuer
    other = OidcClient(OidcSettings(f"http://localhost:{oidc_provider.port}", oidc_provider.client_id, None))
    with pytest.raises(ConfigError, match="different issuer"):
        other.start_device_login()


def test_settings_from_carecli_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from carecli.config import load_settings

    monkeypatch.setenv("CARECLI_OIDC_ISSUER", "https://idp.example.com/")
    with pytest.raises(ConfigError, match="CLIENT_ID"):
        OidcSettings.from_settings(load_settings())
    monkeypatch.setenv("CARECLI_OIDC_CLIENT_ID", "carecli")
    monkeypatch.setenv("CARECLI_OIDC_AUDIENCE", "https://api.example.com")
    assert OidcSettings.from_settings(load_settings()) == OidcSettings(
        "https://idp.example.com/", "carecli", "https://api.example.com"
    )


def test_a_given_session_is_used(oidc_provider: OidcProvider) -> None:
    session = requests.Session()
    session.headers["User-Agent"] = "carecli-test"
    seen: list[str] = []
    session.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response.url))
    client = client_for(oidc_provider, session=session)
    client.validate_token(oidc_provider.make_token())
    assert any(url.endswith("/jwks") for url in seen)


def test_an_authlib_session_can_be_given(oidc_provider: OidcProvider) -> None:
    from authlib.integrations.requests_client import OAuth2Session

    client = client_for(oidc_provider, session=OAuth2Session(client_id=oidc_provider.client_id))
    authorization = client.start_device_login()
    oidc_provider.approve(authorization.user_code, "sub-8")
    assert "id_token" in client.wait_for_tokens(authorization, sleep=FakeTime().sleep)
