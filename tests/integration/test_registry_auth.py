"""HttpRegistry's auth against a real docker-registry: htpasswd (Basic) and token (Bearer) auth.

For token auth the registry runs with ``auth: token:`` and trusts a certificate; a small
loopback token issuer here signs real ES256 JWTs with that certificate's key (``x5c`` header),
so the registry itself verifies every token the client obtains.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from prefetcher.adapters.docker_config import read_docker_config
from prefetcher.adapters.registry import HttpRegistry
from prefetcher.core.refs import parse_reference
from prefetcher.errors import RegistryError
from prefetcher.ports import Credentials
from tests.support.oci import PushedImage, push_modelcar
from tests.support.registry import RunningRegistry, TokenAuth, loopback_server, start_registry

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "pa55-w0rd-sekret"
REFRESH_TOKEN = "refresh-token-sekret"


def _write_config(path: Path, host: str, entry: dict[str, str]) -> Path:
    path.write_text(json.dumps({"auths": {host: entry}}))
    return path


def _basic(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _assert_no_secret(err: BaseException) -> None:
    text = f"{err} {err.__cause__}"
    for secret in (PASSWORD, REFRESH_TOKEN, _basic(USER, PASSWORD)["auth"]):
        assert secret not in text


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with start_registry(tmp_path_factory.mktemp("htpasswd-registry"), htpasswd=(USER, PASSWORD)) as running:
        yield running


@pytest.fixture(scope="module")
def basic_image(basic_registry: RunningRegistry) -> PushedImage:
    return push_modelcar(basic_registry, "auth/model", files={"f": b"basic"})


def _resolve(image: PushedImage, host: str, credentials: dict[str, Credentials] | None = None) -> object:
    adapter = HttpRegistry(insecure=[host], credentials=credentials, timeout_seconds=10)
    try:
        return adapter.resolve(parse_reference(image.tag_ref))
    finally:
        adapter.close()


def test_basic_without_credentials_is_401(basic_registry: RunningRegistry, basic_image: PushedImage) -> None:
    with pytest.raises(RegistryError, match="no credentials configured") as caught:
        _resolve(basic_image, basic_registry.host)
    assert caught.value.status == 401
    assert caught.value.reason == "unauthorized"
    assert f"registry {basic_registry.host} repository auth/model" in str(caught.value)


@pytest.mark.parametrize(
    "entry", [_basic(USER, PASSWORD), {"username": USER, "password": PASSWORD}], ids=["auth", "fields"]
)
def test_basic_with_config_json(
    basic_registry: RunningRegistry, basic_image: PushedImage, tmp_path: Path, entry: dict[str, str]
) -> None:
    config = read_docker_config(_write_config(tmp_path / "config.json", basic_registry.host, entry))
    adapter = HttpRegistry(insecure=[basic_registry.host], credentials=config, timeout_seconds=10)
    try:
        resolved = adapter.resolve(parse_reference(basic_image.tag_ref))
        again = adapter.resolve(parse_reference(basic_image.ref))
        creds = adapter.credentials_for(basic_registry.host)
    finally:
        adapter.close()

    assert resolved.ref.digest == again.ref.digest == basic_image.digest
    assert resolved.size_bytes == basic_image.size_bytes
    assert creds == Credentials(USER, PASSWORD)


def test_basic_wrong_password_is_401(basic_registry: RunningRegistry, basic_image: PushedImage) -> None:
    wrong = {basic_registry.host: Credentials(USER, "not-" + PASSWORD)}
    with pytest.raises(RegistryError) as caught:
        _resolve(basic_image, basic_registry.host, wrong)
    assert caught.value.status == 401
    assert "not-" + PASSWORD not in str(caught.value)
    _assert_no_secret(caught.value)


@dataclass
class TokenIssuer:
    """Issues registry tokens (docker token flow and OAuth2 refresh tokens), signed ES256."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    service: str = "test-registry"
    name: str = "test-issuer"
    seen: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def token(self, subject: str, scopes: list[str]) -> str:
        """A JWT granting ``subject`` (if any) the actions its scopes ask for."""
        access = []
        for scope in " ".join(scopes).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if subject and kind == "repository":
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.name,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _issuer_handler(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            subject = ""
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                if (user, password) != (USER, PASSWORD):
                    self._reply(401, {"details": "wrong username or password"})
                    return
                subject = user
            self._record("GET", subject, query)
            self._reply(200, {"token": issuer.token(subject, query.get("scope", [])), "expires_in": 300})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [REFRESH_TOKEN]:
                self._reply(401, {"error": "invalid_grant"})
                return
            self._record("POST", USER, form)
            token = issuer.token(USER, form.get("scope", []))
            self._reply(200, {"access_token": token, "expires_in": 300})

        def _record(self, method: str, subject: str, fields: dict[str, list[str]]) -> None:
            with issuer.lock:
                issuer.seen.append(
                    {"method": method, "subject": subject, **{k: " ".join(v) for k, v in fields.items()}}
                )

        def _reply(self, status: int, doc: dict[str, object]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _signing_identity() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder(subject_name=name, issuer_name=name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture(scope="module")
def token_setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningRegistry, TokenIssuer, PushedImage]]:
    """A registry with token auth, its issuer, and an image pushed with the issuer's tokens."""
    workdir = tmp_path_factory.mktemp("token-registry")
    key, cert = _signing_identity()
    issuer = TokenIssuer(key, cert)
    bundle = workdir / "token-roots.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with loopback_server(_issuer_handler(issuer)) as issuer_url:
        auth = TokenAuth(f"{issuer_url}/token", issuer.service, issuer.name, bundle)
        with start_registry(workdir, token_auth=auth) as running:
            pusher = replace(running, username=USER, password=PASSWORD)
            image = push_modelcar(pusher, "auth/model", files={"f": b"token"})
            yield running, issuer, image


def test_bearer_anonymous_gets_no_access(
    token_setup: tuple[RunningRegistry, TokenIssuer, PushedImage],
) -> None:
    registry, _, image = token_setup
    with pytest.raises(RegistryError) as caught:
        _resolve(image, registry.host)
    assert caught.value.status == 401
    assert "auth/model" in str(caught.value)


def test_bearer_with_basic_credentials(
    token_setup: tuple[RunningRegistry, TokenIssuer, PushedImage], tmp_path: Path
) -> None:
    registry, issuer, image = token_setup
    config = read_docker_config(
        _write_config(tmp_path / "config.json", registry.host, _basic(USER, PASSWORD))
    )
    adapter = HttpRegistry(insecure=[registry.host], credentials=config, timeout_seconds=10)
    before = len(issuer.seen)
    try:
        resolved = adapter.resolve(parse_reference(image.tag_ref))
        again = adapter.resolve(parse_reference(image.ref))
    finally:
        adapter.close()

    assert resolved.ref.digest == again.ref.digest == image.digest
    assert resolved.size_bytes == image.size_bytes
    # One token served both resolutions: it is cached per repository.
    assert issuer.seen[before:] == [
        {"method": "GET", "subject": USER, "service": issuer.service, "scope": "repository:auth/model:pull"}
    ]


def test_bearer_with_identity_token(token_setup: tuple[RunningRegistry, TokenIssuer, PushedImage]) -> None:
    registry, issuer, image = token_setup
    creds = {registry.host: Credentials(identity_token=REFRESH_TOKEN)}
    before = len(issuer.seen)

    resolved = _resolve(image, registry.host, creds)

    assert getattr(resolved, "size_bytes", None) == image.size_bytes
    assert issuer.seen[before]["method"] == "POST"
    assert issuer.seen[before]["grant_type"] == "refresh_token"


@pytest.mark.parametrize(
    "creds",
    [Credentials(USER, "wrong-" + PASSWORD), Credentials(identity_token="wrong-" + REFRESH_TOKEN)],
    ids=["password", "identity-token"],
)
def test_bearer_refused_by_token_endpoint(
    token_setup: tuple[RunningRegistry, TokenIssuer, PushedImage], creds: Credentials
) -> None:
    registry, _, image = token_setup
    with pytest.raises(RegistryError, match="token endpoint") as caught:
        _resolve(image, registry.host, {registry.host: creds})
    assert caught.value.status == 401
    assert "wrong-" not in str(caught.value)
    _assert_no_secret(caught.value)


def test_registry_verifies_token_signatures(
    token_setup: tuple[RunningRegistry, TokenIssuer, PushedImage],
) -> None:
    """The real registry checks each token: one signed by an untrusted key is refused."""
    registry, issuer, image = token_setup
    trusted = issuer.key, issuer.cert
    issuer.key, issuer.cert = _signing_identity()
    try:
        with pytest.raises(RegistryError) as caught:
            _resolve(image, registry.host, {registry.host: Credentials(USER, PASSWORD)})
    finally:
        issuer.key, issuer.cert = trusted
    assert caught.value.status == 401
