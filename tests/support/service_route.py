"""Test support: the ``kubernetes`` Service's ClusterIP routed to the test cluster's API server.

kubelet gives every pod ``KUBERNETES_SERVICE_HOST=10.0.0.1`` and ``KUBERNETES_SERVICE_PORT=443``:
the ClusterIP of the ``kubernetes`` Service, the first address of ``SERVICE_CIDR``. In-cluster
clients, the agent's among them, connect there, and kube-proxy would forward the connection to
an API server. This suite runs no kube-proxy, so ``service_route`` stands in for it with one rule
in the host's ``nat`` ``OUTPUT`` chain: TCP to ``10.0.0.1:443`` goes to the cluster fixture's
kube-apiserver on ``127.0.0.1:<port>``, whose serving certificate names ``10.0.0.1``. Pods here
use the host's network, so their connections pass through that chain; DNAT to loopback in
``OUTPUT`` needs no ``route_localnet``.

The rule is host-wide, while ``10.0.0.1`` means a different API server to each test session on the
machine. So the rule exists only while a host-wide lock (``flock`` on ``LOCK_FILE``) is held:
another session that wants the route waits for it (``LOCK_TIMEOUT_SECONDS``), and no two sessions
ever route the address at once. Sessions that do not ask for the route are unaffected: nothing
else connects to ``10.0.0.1`` (the shared ``apiserver`` fixture has the same service CIDR, but no
client uses its ClusterIP). Every rule carries the comment ``COMMENT``; one still present when
the lock is taken was left by a killed run (the lock dies with its holder) and is removed.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.apiserver import SERVICE_CIDR
from tests.support.cluster import Cluster

SERVICE_IP = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))  # the Service ClusterIP
SERVICE_PORT = 443
LOCK_FILE = Path("/run/lock/modelcar-service-route.lock")
LOCK_TIMEOUT_SECONDS = 300.0
COMMENT = "modelcar-prefetcher test service route"
IPTABLES_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class ServiceRoute:
    """``SERVICE_IP:SERVICE_PORT`` forwarded to the API server on ``127.0.0.1:apiserver_port``."""

    apiserver_port: int

    @property
    def rule(self) -> list[str]:
        """The rule's specification, as ``iptables -t nat -A``/``-D`` take it."""
        return _dnat(SERVICE_IP, SERVICE_PORT, self.apiserver_port)

    @contextmanager
    def forward(self, service_ip: str, service_port: int, local_port: int) -> Iterator[None]:
        """Route another Service's ClusterIP to ``127.0.0.1:local_port`` inside the block.

        For a Service whose pods use the host's network, e.g. a webhook the API server calls
        through its Service. The rule carries ``COMMENT`` and lives under the same host lock.
        """
        rule = _dnat(service_ip, service_port, local_port)
        added = _iptables("-A", *rule)
        if added.returncode != 0:
            pytest.fail(f"iptables -t nat -A {' '.join(rule)}: {added.stderr.strip()}")
        try:
            yield
        finally:
            removed = _iptables("-D", *rule)
            assert removed.returncode == 0, f"removing the route to {service_ip}: {removed.stderr.strip()}"


def _dnat(ip: str, port: int, local_port: int) -> list[str]:
    return [
        "OUTPUT",
        *("-d", f"{ip}/32", "-p", "tcp", "--dport", str(port)),
        *("-m", "comment", "--comment", COMMENT),
        *("-j", "DNAT", "--to-destination", f"127.0.0.1:{local_port}"),
    ]


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock rather than fail while another tool changes the rules.
    return subprocess.run(
        ["iptables", "-w", "10", "-t", "nat", *args],
        capture_output=True,
        text=True,
        timeout=IPTABLES_TIMEOUT_SECONDS,
        check=False,
    )


def _leftover_rules() -> list[list[str]]:
    """Rules in ``nat OUTPUT`` carrying ``COMMENT``, as ``-D`` arguments."""
    listed = _iptables("-S", "OUTPUT")
    if listed.returncode != 0:
        pytest.fail(f"iptables -t nat -S OUTPUT exited {listed.returncode}: {listed.stderr.strip()}")
    rules = []
    for line in listed.stdout.splitlines():
        if line.startswith("-A OUTPUT ") and f'"{COMMENT}"' in line:
            # -S prints the comment quoted; the arguments are the line's words without the quotes.
            words = line.replace(f'"{COMMENT}"', "\0").split()
            rules.append([COMMENT if w == "\0" else w for w in words[1:]])
    return rules


@contextmanager
def _host_lock(timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the host-wide route lock; fail naming the holder when it is not free in time."""
    with LOCK_FILE.open("a+") as lock:
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    lock.seek(0)
                    pytest.fail(
                        f"{SERVICE_IP}:{SERVICE_PORT} is still routed by another test session "
                        f"(pid {lock.read().strip() or '?'}) after {timeout_seconds:.0f}s ({LOCK_FILE})"
                    )
                time.sleep(0.5)  # another session's test holds it for its whole run
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def routed_service(apiserver_port: int) -> Iterator[ServiceRoute]:
    """Route the ``kubernetes`` ClusterIP to ``127.0.0.1:apiserver_port`` inside the block."""
    if shutil.which("iptables") is None:
        pytest.fail("iptables not found: install the Debian package 'iptables'")
    route = ServiceRoute(apiserver_port)
    with _host_lock():
        for leftover in _leftover_rules():
            _iptables("-D", *leftover)
        added = _iptables("-A", *route.rule)
        if added.returncode != 0:
            pytest.fail(f"iptables -t nat -A {' '.join(route.rule)}: {added.stderr.strip()}")
        try:
            yield route
        finally:
            removed = _iptables("-D", *route.rule)
            assert removed.returncode == 0, f"removing the service route: {removed.stderr.strip()}"


@pytest.fixture
def service_route(cluster: Cluster) -> Iterator[ServiceRoute]:
    """In-cluster clients of ``cluster`` reach its API server at the ``kubernetes`` ClusterIP."""
    with routed_service(cluster.apiserver.port) as route:
        yield route
