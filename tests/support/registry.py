"""Test support: a real CNCF distribution registry (``docker-registry``) on loopback.

``start_registry`` runs ``docker-registry serve`` with its storage in a work directory, on
127.0.0.1 with a free port, optionally behind htpasswd basic auth, TLS or token (bearer) auth,
and waits for ``/v2/`` to answer. The session fixture ``registry`` is an anonymous plain-HTTP one.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import http.client
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.support.pki import Pki

BINARY = "docker-registry"
APT_PACKAGE = "docker-registry"
STARTUP_TIMEOUT_SECONDS = 30.0
_PORT_ATTEMPTS = 5


@dataclass(frozen=True)
class TokenAuth:
    """Settings of distribution's ``auth: token:`` (a bearer token issuer the registry trusts)."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


@dataclass(frozen=True)
class RunningRegistry:
    """A registry process started by ``start_registry``; ``host`` is ``127.0.0.1:PORT``."""

    host: str
    url: str
    root: Path
    log_file: Path
    username: str = ""
    password: str = ""
    ca_file: Path | None = None
    token_auth: TokenAuth | None = None

    @property
    def port(self) -> int:
        """The TCP port the registry listens on."""
        return int(self.host.rsplit(":", 1)[1])

    @property
    def tls(self) -> bool:
        """True when the registry speaks HTTPS."""
        return self.url.startswith("https://")

    def __repr__(self) -> str:
        return f"RunningRegistry(url={self.url!r}, root={str(self.root)!r})"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash as htpasswd files for distribution need (via the system's libcrypt)."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", 5, None, 0)
    hashed = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2"):
        raise RuntimeError("libcrypt cannot make bcrypt hashes")
    return str(hashed.decode())


def _config(
    workdir: Path,
    port: int,
    *,
    htpasswd_file: Path | None,
    tls: tuple[Path, Path] | None,
    token_auth: TokenAuth | None,
    proxy_remote_url: str | None = None,
) -> dict[str, object]:
    http_section: dict[str, object] = {
        "addr": f"127.0.0.1:{port}",
        "secret": secrets.token_hex(16),
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls is not None:
        http_section["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(workdir / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http_section,
    }
    if proxy_remote_url is not None:
        # A pull-through cache: blobs and manifests it lacks are fetched from there and kept.
        config["proxy"] = {"remoteurl": proxy_remote_url}
    if htpasswd_file is not None:
        config["auth"] = {"htpasswd": {"realm": "test-realm", "path": str(htpasswd_file)}}
    elif token_auth is not None:
        config["auth"] = {
            "token": {
                "realm": token_auth.realm,
                "service": token_auth.service,
                "issuer": token_auth.issuer,
                "rootcertbundle": str(token_auth.rootcertbundle),
            }
        }
    return config


def _answers(host: str, port: int, *, tls: bool) -> bool:
    """True when ``GET /v2/`` gets any HTTP answer (200, or 401 behind auth)."""
    conn: http.client.HTTPConnection
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=2, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status in (200, 401)
    except OSError:
        return False
    finally:
        conn.close()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _launch(
    config_file: Path, log_file: Path, port: int, *, tls: bool, binary: str = BINARY
) -> subprocess.Popen[bytes]:
    """Start the binary and poll until it answers; raise RuntimeError with its log otherwise."""
    with log_file.open("ab") as log:
        proc = subprocess.Popen([binary, "serve", str(config_file)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{binary} exited with {proc.returncode}:\n{_tail(log_file)}")
        if _answers("127.0.0.1", port, tls=tls):
            return proc
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
    _stop(proc)
    raise RuntimeError(f"{binary} did not answer on port {port}:\n{_tail(log_file)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def start_registry(
    workdir: Path,
    *,
    htpasswd: tuple[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
    token_auth: TokenAuth | None = None,
    ca_file: Path | None = None,
    proxy_remote_url: str | None = None,
    binary: str = BINARY,
) -> Iterator[RunningRegistry]:
    """Run a real registry storing under ``workdir``; it is killed when the block exits.

    ``htpasswd`` is ``(username, password)``; ``tls`` is ``(certificate, key)`` PEM files, with
    ``ca_file`` the bundle clients should trust; ``token_auth`` configures bearer token auth;
    ``proxy_remote_url`` (``http://HOST:PORT``) makes it a pull-through cache of that registry;
    ``binary`` is another build of Distribution to run (``hack/distribution.sh``).
    """
    if binary == BINARY and shutil.which(BINARY) is None:
        pytest.fail(f"{BINARY} not found: install the Debian package {APT_PACKAGE!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd_file = None
    if htpasswd is not None:
        htpasswd_file = workdir / "htpasswd"
        htpasswd_file.write_text(f"{htpasswd[0]}:{bcrypt_hash(htpasswd[1])}\n")
    log_file = workdir / "registry.log"
    proc, port = _start_on_free_port(
        workdir,
        log_file,
        htpasswd_file=htpasswd_file,
        tls=tls,
        token_auth=token_auth,
        proxy_remote_url=proxy_remote_url,
        binary=binary,
    )
    scheme = "https" if tls else "http"
    try:
        yield RunningRegistry(
            host=f"127.0.0.1:{port}",
            url=f"{scheme}://127.0.0.1:{port}",
            root=workdir / "storage",
            log_file=log_file,
            username=htpasswd[0] if htpasswd else "",
            password=htpasswd[1] if htpasswd else "",
            ca_file=ca_file,
            token_auth=token_auth,
        )
    finally:
        _stop(proc)


def _start_on_free_port(
    workdir: Path,
    log_file: Path,
    *,
    htpasswd_file: Path | None,
    tls: tuple[Path, Path] | None,
    token_auth: TokenAuth | None,
    proxy_remote_url: str | None,
    binary: str,
) -> tuple[subprocess.Popen[bytes], int]:
    """Another process may take the port between probe and bind, so retry a few ports."""
    error: RuntimeError | None = None
    for _ in range(_PORT_ATTEMPTS):
        port = free_port()
        config = _config(
            workdir,
            port,
            htpasswd_file=htpasswd_file,
            tls=tls,
            token_auth=token_auth,
            proxy_remote_url=proxy_remote_url,
        )
        config_file = workdir / "config.yml"
        config_file.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        try:
            return _launch(config_file, log_file, port, tls=tls is not None, binary=binary), port
        except RuntimeError as exc:
            error = exc
            if "address already in use" not in str(exc):
                break
    pytest.fail(f"could not start {binary}: {error}")


@dataclass(frozen=True)
class Response:
    """An HTTP answer of the registry, read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class RegistryClient:
    """A minimal distribution v2 client for tests (pushing fixtures, reading them back).

    Separate from the product's client on purpose: tests must not rely on the code under test to
    set up their data. It knows the registry's auth setup instead of following challenges.
    """

    def __init__(self, registry: RunningRegistry, *, timeout_seconds: float = 120.0) -> None:
        self.registry = registry
        self.timeout_seconds = timeout_seconds
        self._tokens: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        body: bytes | BinaryIO | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request to ``path`` (with query) with auth for ``scope``."""
        all_headers = dict(headers or {})
        auth = self._authorization(scope)
        if auth:
            all_headers["Authorization"] = auth
        conn = self._connection(self.registry.url)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            answer = conn.getresponse()
            data = answer.read()
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)
        finally:
            conn.close()

    def _connection(self, url: str) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port
        if parts.scheme == "https":
            context = ssl.create_default_context(
                cafile=str(self.registry.ca_file) if self.registry.ca_file else None
            )
            return http.client.HTTPSConnection(
                host, port, timeout=self.timeout_seconds, context=context, blocksize=1 << 20
            )
        return http.client.HTTPConnection(host, port, timeout=self.timeout_seconds, blocksize=1 << 20)

    def _authorization(self, scope: str) -> str:
        reg = self.registry
        if reg.token_auth is not None:
            if scope not in self._tokens:
                self._tokens[scope] = self._fetch_token(reg.token_auth, scope)
            return f"Bearer {self._tokens[scope]}"
        if reg.username:
            pair = f"{reg.username}:{reg.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        return ""

    def _fetch_token(self, auth: TokenAuth, scope: str) -> str:
        query = urllib.parse.urlencode({"service": auth.service, "scope": scope})
        parts = urllib.parse.urlsplit(auth.realm)
        conn = self._connection(auth.realm)
        headers = {}
        if self.registry.username:
            pair = f"{self.registry.username}:{self.registry.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        try:
            conn.request("GET", f"{parts.path}?{query}", headers=headers)
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        if answer.status != 200:
            raise RuntimeError(f"token endpoint answered {answer.status}: {data[:200]!r}")
        doc = json.loads(data)
        return str(doc.get("token") or doc["access_token"])


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA and a server certificate it signed for 127.0.0.1 and localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Create a CA and a server certificate for 127.0.0.1 and localhost under ``directory``."""
    pki = Pki.create(directory)
    cert, key = pki.issue("server", common_name="127.0.0.1", sans=("127.0.0.1", "localhost"), server=True)
    return TlsFiles(ca_file=pki.ca_file, cert_file=cert, key_file=key)


@contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a thread; yields ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-server", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A session-wide anonymous plain-HTTP registry on loopback."""
    with start_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running
