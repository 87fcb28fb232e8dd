"""Test support: the shipped webhook registration, and ``prefetcher webhook`` as a loopback process.

``rendered_webhook_config`` is the MutatingWebhookConfiguration of deploy/webhook as kustomize
renders it; ``register`` points its entries at a URL with a ``caBundle``. ``webhook_process`` runs
the real CLI with the shipped config file (deploy/webhook/base/webhook.yaml, optionally with some
settings replaced) on a free loopback port, serving a certificate from the API server's test CA,
and registers it for one namespace only, under a configuration name of its own, so it never sees
another test's pods.
"""

from __future__ import annotations

import base64
import functools
import json
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.apiserver import ApiServer, ControlPlaneError, Daemon
from tests.support.registry import free_port

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_CONFIG_FILE = REPO / "deploy" / "webhook" / "base" / "webhook.yaml"
_START_ATTEMPTS = 3


def rendered_webhook_config() -> dict[str, Any]:
    """The shipped MutatingWebhookConfiguration, rendered by ``kubectl kustomize``."""
    kubectl_bin = shutil.which("kubectl") or "/usr/bin/kubectl"
    out = subprocess.run(
        [kubectl_bin, "kustomize", str(REPO / "deploy" / "webhook")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    config: dict[str, Any] = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    return config


def register(apiserver: ApiServer, config: dict[str, Any], *, url: str, ca_pem: bytes) -> None:
    """Apply ``config`` with every entry's ``clientConfig`` set to ``url`` and ``caBundle``."""
    for webhook in config["webhooks"]:
        webhook["clientConfig"] = {"url": url, "caBundle": base64.b64encode(ca_pem).decode()}
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(config))


@dataclass(frozen=True)
class WebhookProcess:
    """``prefetcher webhook`` serving on ``port``, registered as ``configuration``."""

    port: int
    configuration: str
    daemon: Daemon

    def log_tail(self, lines: int = 30) -> str:
        return self.daemon.log_tail(lines)


def _healthy(port: int, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=context) as r:
            return bool(r.read() == b"ok\n")
    except (urllib.error.URLError, OSError):
        return False


def _start(apiserver: ApiServer, workdir: Path, config_file: Path) -> tuple[Daemon, int]:
    """The CLI on a free port (retried: another process may take the port first), once healthy."""
    crt, key = apiserver.pki.issue("webhook-serving", common_name="webhook", server=True, sans=["127.0.0.1"])
    context = ssl.create_default_context(cafile=str(apiserver.ca_file))
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = free_port()
        argv = [sys.executable, "-m", "prefetcher", "webhook", f"--config={config_file}"]
        argv += [f"--cert={crt}", f"--key={key}", f"--listen=127.0.0.1:{port}"]
        daemon = Daemon("webhook", argv, workdir / "webhook.log")
        daemon.start()
        try:
            daemon.wait_until(functools.partial(_healthy, port, context), "a healthy /healthz")
        except ControlPlaneError:
            daemon.stop()
            if attempt == _START_ATTEMPTS:
                raise
        else:
            return daemon, port
    raise ControlPlaneError(f"webhook found no free port in {_START_ATTEMPTS} attempts")


@contextmanager
def webhook_process(
    apiserver: ApiServer, workdir: Path, *, namespace: str, settings: Mapping[str, object] | None = None
) -> Iterator[WebhookProcess]:
    """Run the webhook CLI and register the shipped configuration for ``namespace`` only.

    ``settings`` (camelCase keys of the webhook config) replace the shipped file's values.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = WEBHOOK_CONFIG_FILE
    if settings:
        config_file = workdir / "webhook.yaml"
        shipped = yaml.safe_load(WEBHOOK_CONFIG_FILE.read_text())
        config_file.write_text(yaml.safe_dump({**shipped, **settings}))
    config = rendered_webhook_config()
    name = f"{config['metadata']['name']}-{namespace}"
    config["metadata"]["name"] = name
    only_here = {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}
    for entry in config["webhooks"]:
        entry["namespaceSelector"]["matchExpressions"].append(only_here)
    daemon, port = _start(apiserver, workdir, config_file)
    try:
        url, ca_pem = f"https://127.0.0.1:{port}/mutate", apiserver.ca_file.read_bytes()
        register(apiserver, config, url=url, ca_pem=ca_pem)
        yield WebhookProcess(port=port, configuration=name, daemon=daemon)
    finally:
        apiserver.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        daemon.stop()


def until_closed(tls: ssl.SSLSocket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while True:
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            return received
        if not chunk:
            return received
        received += chunk
