"""A real etcd and kube-apiserver on loopback, started once per test session.

The binaries come from an envtest-style directory: ``KUBEBUILDER_ASSETS`` when set, otherwise the
cache directory that ``hack/k8s-assets.sh --print-dir`` names. Tests never build them; missing
binaries fail the fixture with the command that builds them.

Everything the control plane needs is generated into a session temp dir: a CA, the API server's
serving certificate, a service-account signing key and an admin client certificate in
``system:masters`` with its kubeconfig. Both processes listen on ephemeral loopback ports.
Readiness is ``/health`` (etcd) and ``/readyz`` (kube-apiserver) polled against a deadline.
``ApiServer.restart`` and ``ApiServer.stopped`` take kube-apiserver down and back up on the same
port against the same etcd, for tests of clients that must survive a restart mid-watch;
``ApiServer.write_kubeconfig`` issues further identities (a node, a controller) from the same CA.

No kube-controller-manager runs, so ``ApiServer.create_namespace`` also creates what its
controllers would: the ``default`` ServiceAccount (the ServiceAccount admission plugin rejects Pods
without it) and the ``kube-root-ca.crt`` ConfigMap.

The certificates come from ``tests.support.pki``, shared with the registry and webhook tests.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.pki import Pki, write_key
from tests.support.registry import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS_SCRIPT = REPO_ROOT / "hack" / "k8s-assets.sh"
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kubectl")
SERVICE_CIDR = "10.0.0.0/24"
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 0.1
KUBECTL_TIMEOUT_SECONDS = 120.0
PORT_ATTEMPTS = 3

_T = TypeVar("_T")


class ControlPlaneError(Exception):
    """A test-side control-plane process did not start, stop or answer as expected."""


# --- processes -------------------------------------------------------------------------------


class Daemon:
    """One supervised child process whose output goes to ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name, self.argv, self.log_path = name, list(argv), log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process; the caller waits for readiness.

        Call it from a thread that outlives the process: the parent-death signal fires when the
        *thread* that forked the child exits (prctl(2) PR_SET_PDEATHSIG), so a daemon started
        from a worker thread (e.g. ``kubelet.restart()`` in a thread pool) is killed with it.
        """
        if self._proc is not None:
            raise ControlPlaneError(f"{self.name} is already running")
        # setpriv kills the child if the test process dies without running teardown.
        wrapper = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*wrapper, *self.argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def stop(self) -> None:
        """Stop with SIGTERM, then SIGKILL after a grace period."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def exited(self) -> bool:
        return self._proc is None or self._proc.poll() is not None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Poll ``ready`` until it holds, the process exits, or the start deadline passes."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not ready():
            if self.exited():
                raise ControlPlaneError(
                    f"{self.name} exited before {what}; log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{self.name}: no {what} within {START_TIMEOUT_SECONDS}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_SECONDS)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """True when ``url`` answers 2xx; urllib raises for anything else."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            response.read()
            return True
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        return False


def _start_etcd(assets: Path, workdir: Path) -> tuple[Daemon, str]:
    """Start etcd on fresh loopback ports; return it and its client URL."""

    def attempt() -> tuple[Daemon, str]:
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        argv = [
            str(assets / "etcd"),
            "--name=test",
            f"--data-dir={workdir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--unsafe-no-fsync",  # test data is disposable; fsync dominates start-up on slow disks
            "--log-level=warn",
        ]
        daemon = Daemon("etcd", argv, workdir / "etcd.log")
        daemon.start()
        daemon.wait_until(lambda: _http_ok(f"{client}/health"), "a healthy /health")
        return daemon, client

    return _retry_port_clash(attempt)


def _retry_port_clash(attempt: Callable[[], _T]) -> _T:
    """Run ``attempt`` again when another process took its ephemeral port first."""
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            return attempt()
        except ControlPlaneError as err:
            if "address already in use" not in str(err):
                raise
    return attempt()


def _apiserver_argv(assets: Path, workdir: Path, pki: Pki, port: int, etcd_url: str) -> list[str]:
    serving_crt, serving_key = pki.issue(
        "apiserver",
        common_name="kube-apiserver",
        server=True,
        sans=[
            "127.0.0.1",
            "10.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    write_key(pki.directory / "sa.key", sa_key)
    (pki.directory / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return [
        str(assets / "kube-apiserver"),
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--etcd-servers={etcd_url}",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        f"--tls-cert-file={serving_crt}",
        f"--tls-private-key-file={serving_key}",
        f"--client-ca-file={pki.ca_file}",
        f"--service-account-key-file={pki.directory / 'sa.pub'}",
        f"--service-account-signing-key-file={pki.directory / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
        "--allow-privileged=true",
        # 127.0.0.1 is not a valid Endpoints address, so the "kubernetes" Service is left alone.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        # Without a watch grace period, SIGTERM waits out open watches for the full request
        # timeout (60 s); tests that restart mid-watch want the streams cut promptly.
        "--shutdown-watch-termination-grace-period=1s",
    ]


# --- the fixture's value ---------------------------------------------------------------------


@dataclass(frozen=True)
class ApiServer:
    """A running kube-apiserver (and its etcd) with an admin kubeconfig."""

    url: str
    port: int
    etcd_url: str
    kubeconfig: Path
    ca_file: Path
    assets_dir: Path
    workdir: Path
    pki: Pki = field(repr=False)
    daemon: Daemon = field(repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the CA and presents the admin certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.pki.directory / "admin.crt", self.pki.directory / "admin.key")
        return context

    def wait_ready(self) -> None:
        """Block until ``/readyz`` answers 200 or fail with the API server's log."""
        context = self.ssl_context()
        self.daemon.wait_until(lambda: _http_ok(f"{self.url}/readyz", context), "a ready /readyz")

    def restart(self) -> None:
        """Stop kube-apiserver and start it again on the same port against the same etcd."""
        self.daemon.stop()
        self.daemon.start()
        self.wait_ready()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Keep kube-apiserver down inside the ``with`` block; it is ready again after it."""
        self.daemon.stop()
        try:
            yield
        finally:
            self.daemon.start()
            self.wait_ready()

    def kubectl(self, *args: str, input: str | None = None, kubeconfig: Path | None = None) -> str:
        """Run the built kubectl (as the admin unless ``kubeconfig`` is given); return stdout.

        Raises ``ControlPlaneError`` carrying kubectl's stderr on a non-zero exit.
        """
        argv = [
            str(self.assets_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result.stdout

    def write_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """Issue a client certificate for ``user`` in ``groups``; return its kubeconfig path."""
        stem = "user-" + "".join(c if c.isalnum() else "-" for c in user)
        crt, key = self.pki.issue(stem, common_name=user, organizations=groups)
        path = self.workdir / f"{stem}.kubeconfig"
        path.write_text(_kubeconfig(self.url, self.ca_file, crt, key))
        return path

    def create_namespace(self, name: str) -> None:
        """Create a namespace with the ServiceAccount and CA ConfigMap controllers would add."""
        ca_pem = self.ca_file.read_text()
        items = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": name},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "kube-root-ca.crt", "namespace": name},
                "data": {"ca.crt": ca_pem},
            },
        ]
        self.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        )


def _kubeconfig(url: str, ca_file: Path, crt: Path, key: Path) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": url, "certificate-authority": str(ca_file)}}],
            "users": [{"name": "test", "user": {"client-certificate": str(crt), "client-key": str(key)}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        },
        indent=2,
    )


def resolve_assets_dir() -> Path:
    """Return the binaries directory, or fail the test with the command that builds it."""
    env = os.environ.get("KUBEBUILDER_ASSETS")
    if env:
        assets = Path(env)
        fix = f"unset KUBEBUILDER_ASSETS to use {ASSETS_SCRIPT} --print-dir, or point it at such a directory"
    else:
        printed = subprocess.run(
            [str(ASSETS_SCRIPT), "--print-dir"], capture_output=True, text=True, check=True
        )
        assets = Path(printed.stdout.strip())
        cache = os.environ.get("MODELCAR_ASSETS_CACHE")
        fix = f"build them with: {f'MODELCAR_ASSETS_CACHE={cache} ' if cache else ''}{ASSETS_SCRIPT}"
    missing = [b for b in REQUIRED_BINARIES if not os.access(assets / b, os.X_OK)]
    if missing:
        pytest.fail(
            f"Kubernetes test binaries {', '.join(missing)} are missing from {assets}; {fix}",
            pytrace=False,
        )
    return assets


# --- fixtures --------------------------------------------------------------------------------


def _start_apiserver(assets: Path, workdir: Path, pki: Pki, etcd_url: str) -> ApiServer:
    """Start kube-apiserver on a fresh loopback port; return it once ``/readyz`` passes."""
    admin_crt, admin_key = pki.issue("admin", common_name="admin", organizations=["system:masters"])

    def attempt() -> ApiServer:
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        kubeconfig = workdir / "admin.kubeconfig"
        kubeconfig.write_text(_kubeconfig(url, pki.ca_file, admin_crt, admin_key))
        argv = _apiserver_argv(assets, workdir, pki, port, etcd_url)
        server = ApiServer(
            url=url,
            port=port,
            etcd_url=etcd_url,
            kubeconfig=kubeconfig,
            ca_file=pki.ca_file,
            assets_dir=assets,
            workdir=workdir,
            pki=pki,
            daemon=Daemon("kube-apiserver", argv, workdir / "kube-apiserver.log"),
        )
        server.daemon.start()
        try:
            server.wait_ready()
        except ControlPlaneError:
            server.daemon.stop()
            raise
        return server

    return _retry_port_clash(attempt)


@contextlib.contextmanager
def start_control_plane(workdir: Path) -> Iterator[ApiServer]:
    """etcd and kube-apiserver on loopback under ``workdir``; both stopped when the block exits."""
    assets = resolve_assets_dir()
    pki = Pki.create(workdir / "pki")
    with contextlib.ExitStack() as cleanup:
        etcd, etcd_url = _start_etcd(assets, workdir)
        cleanup.callback(etcd.stop)
        server = _start_apiserver(assets, workdir, pki, etcd_url)
        cleanup.callback(server.daemon.stop)
        yield server


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A session-wide kube-apiserver + etcd on loopback, torn down at the end of the session."""
    with start_control_plane(tmp_path_factory.mktemp("apiserver")) as server:
        yield server
