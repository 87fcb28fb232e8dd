"""AdmissionReview latency of the webhook over TLS with keep-alive, against a minimal TLS server.

Open loop: requests are scheduled at a fixed rate (default 200/s for 30 s) whatever the answers,
and each latency is measured from its *scheduled* send time, so a stall shows up in the tail
instead of slowing the load (no coordinated omission). A pool of client threads, each with one
kept-alive HTTPS connection opened before the schedule starts, carries the requests. Each server
runs in its own process, the client in this one; both servers are loaded in alternating 5 s
slices so that both see the same background noise. The baseline is the same stdlib HTTP/1.1 +
TLS stack answering a fixed AdmissionReview with no parsing, measured in the same run, so the
ratio isolates the webhook's own cost (JSON, patch building, metrics) from the machine and from
Python's HTTP stack. Each server's CPU time (user + system, from ``/proc/PID/stat``) over the
measured slices, divided by the requests, is printed too: it depends far less on the machine's
load than the latencies do.

``--compare LABEL=DIR`` also serves the webhook of another checkout (``git worktree add DIR
COMMIT``) in the same alternating slices, e.g. the server before a change next to the one after.

    .venv/bin/python bench/webhook_latency.py [--rate 200] [--seconds 30] [--compare old=DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import queue
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prometheus_client import CollectorRegistry  # noqa: E402

from prefetcher.webhook.config import WebhookConfig  # noqa: E402
from prefetcher.webhook.handler import handle_review  # noqa: E402
from prefetcher.webhook.metrics import WebhookMetrics  # noqa: E402
from prefetcher.webhook.server import WebhookServer  # noqa: E402
from prefetcher.webhook.tls import CertificateStore  # noqa: E402
from tests.support.admission import admission_review  # noqa: E402
from tests.support.pki import Pki  # noqa: E402

KSERVE = "internal.serving.kserve.io/storage-initializer-sourceuri"
MAX_SECONDS = 120
MAX_RATE = 2000
CLIENTS = 8
WARMUP_SECONDS = 2.0
SLICE_SECONDS = 5.0


def review(uid: str) -> bytes:
    """A KServe predictor pod CREATE that the webhook wires (the common, most expensive case)."""
    pod = {
        "metadata": {
            "generateName": "llama-predictor-",
            "labels": {"serving.kserve.io/inferenceservice": "llama"},
            "annotations": {KSERVE: "oci://quay.io/acme/llama@sha256:" + "4" * 64},
        },
        "spec": {
            "containers": [
                {
                    "name": "kserve-container",
                    "image": "vllm/vllm-openai:v0.6.0",
                    "args": ["--model", "/mnt/models", "--port", "8080"],
                    "env": [{"name": "PORT", "value": "8080"}],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                },
                {"name": "queue-proxy", "image": "knative/queue:1", "ports": [{"containerPort": 8012}]},
            ],
            "serviceAccountName": "default",
        },
    }
    user = {"username": "system:serviceaccount:kube-system:replicaset-controller"}
    document = admission_review(pod, uid=uid, userInfo=user)
    return json.dumps(document).encode()


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a serving certificate for 127.0.0.1: (ca, cert, key) paths."""
    pki = Pki.create(directory)
    cert, key = pki.issue("tls", common_name="127.0.0.1", sans=("127.0.0.1",), server=True)
    return pki.ca_file, cert, key


def serve_webhook(cert: Path, key: Path) -> None:
    """The real webhook server with its default config."""
    store = CertificateStore(cert, key, on_reload=lambda _outcome: None)
    server = WebhookServer(
        config=WebhookConfig(),
        certs=store,
        metrics=WebhookMetrics(CollectorRegistry()),
        address=("127.0.0.1", 0),
    )
    server.start()
    print(server.port, flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin
    server.stop()


def serve_baseline(cert: Path, key: Path) -> None:
    """Stdlib HTTP/1.1 over TLS answering every POST with one fixed AdmissionReview, same size."""
    answer, _ = handle_review(review("fixed"), config=WebhookConfig())
    body = json.dumps(answer, separators=(",", ":")).encode()
    fixed = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )

    class Fixed(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.wfile.write(fixed)  # one write: headers and body in one TLS record

        def log_message(self, format: str, *args: object) -> None:
            return

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[socket.socket, object]:
            sock, address = self.socket.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return context.wrap_socket(sock, server_side=True), address

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server = Server(("127.0.0.1", 0), Fixed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown()


# --- the open-loop client ---------------------------------------------------------------------


def run_load(port: int, ca: Path, *, rate: float, seconds: float) -> tuple[list[float], int]:
    """Latencies in seconds (from scheduled time) of ``rate*seconds`` requests, and the errors."""
    jobs: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
    latencies: list[float] = []
    errors: list[str] = []
    context = ssl.create_default_context(cafile=str(ca))

    ready = threading.Barrier(CLIENTS + 1)

    def worker() -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        conn.connect()  # the TLS handshake happens before the schedule starts
        ready.wait()
        while (job := jobs.get()) is not None:
            scheduled, body = job
            try:
                conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors.append(str(response.status))
            except (OSError, http.client.HTTPException) as error:
                errors.append(repr(error))
                conn.close()
            latencies.append(time.perf_counter() - scheduled)
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=30)
    bodies = [review(f"bench-{i}") for i in range(64)]
    pace = threading.Event()  # never set: its wait() paces the schedule
    start = time.perf_counter() + 0.05
    for index in range(int(rate * seconds)):
        at = start + index / rate
        delay = at - time.perf_counter()
        if delay > 0:
            pace.wait(delay)
        jobs.put((at, bodies[index % len(bodies)]))
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join(timeout=30)
    return latencies, len(errors)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(fraction * len(ordered) + 0.999999) - 1))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@dataclass(frozen=True)
class Child:
    """A running server process."""

    port: int
    pid: int


@contextlib.contextmanager
def running(kind: str, cert: Path, key: Path, *, script: Path = Path(__file__)) -> Iterator[Child]:
    """A server child process, of ``script``'s checkout."""
    child = subprocess.Popen(
        [sys.executable, str(script), "--serve", kind, "--cert", str(cert), "--key", str(key)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=script.parents[1],
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        yield Child(port=int(child.stdout.readline()), pid=child.pid)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
        child.stdout.close()


def measure(
    files: tuple[Path, Path, Path], *, rate: float, seconds: float, compare: dict[str, Path]
) -> dict[str, dict[str, float]]:
    """All servers up at once, loaded in turn slice by slice so that all see the same noise."""
    ca, cert, key = files
    slices = max(1, round(seconds / SLICE_SECONDS))
    with contextlib.ExitStack() as stack:
        children = {
            "baseline": stack.enter_context(running("baseline", cert, key)),
            "webhook": stack.enter_context(running("webhook", cert, key)),
        }
        for label, checkout in compare.items():
            script = checkout / "bench" / Path(__file__).name
            children[label] = stack.enter_context(running("webhook", cert, key, script=script))
        samples: dict[str, list[float]] = {kind: [] for kind in children}
        errors = dict.fromkeys(children, 0)
        cpu = dict.fromkeys(children, 0.0)
        for child in children.values():
            run_load(child.port, ca, rate=rate, seconds=WARMUP_SECONDS)
        kinds = list(children)
        for index in range(slices):
            order = kinds[index % len(kinds) :] + kinds[: index % len(kinds)]
            for kind in order if index % 2 == 0 else reversed(order):
                before = cpu_seconds(children[kind].pid)
                latencies, failed = run_load(children[kind].port, ca, rate=rate, seconds=seconds / slices)
                cpu[kind] += cpu_seconds(children[kind].pid) - before
                samples[kind] += latencies
                errors[kind] += failed
    return {
        kind: {
            "requests": len(values),
            "errors": errors[kind],
            "p50_ms": percentile(values, 0.50) * 1000,
            "p99_ms": percentile(values, 0.99) * 1000,
            "max_ms": max(values) * 1000,
            "cpu_ms_per_request": cpu[kind] / len(values) * 1000,
        }
        for kind, values in samples.items()
    }


def checkouts(
    parser: argparse.ArgumentParser, items: list[str], *, reserved: tuple[str, ...] = ("baseline", "webhook")
) -> dict[str, Path]:
    """``--compare LABEL=DIR`` arguments as labelled checkouts; a bad one is a usage error.

    ``reserved`` are the labels the bench itself prints, which a checkout may not take.
    """
    compare = {}
    for item in items:
        label, sep, directory = item.partition("=")
        if not sep or label in reserved or not (Path(directory) / "bench").is_dir():
            parser.error(f"--compare {item!r}: want LABEL=DIR, DIR a checkout of this repository")
        compare[label] = Path(directory).resolve()
    return compare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (open loop)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured duration per server")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also serve the webhook of the checkout in DIR (repeatable)",
    )
    parser.add_argument("--serve", choices=("webhook", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--cert", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        logging.basicConfig(level=logging.WARNING)
        (serve_webhook if args.serve == "webhook" else serve_baseline)(args.cert, args.key)
        return 0
    if not (0 < args.rate <= MAX_RATE and 0 < args.seconds <= MAX_SECONDS):
        parser.error(f"--rate must be in (0, {MAX_RATE}] and --seconds in (0, {MAX_SECONDS}]")
    compare = checkouts(parser, args.compare)
    with tempfile.TemporaryDirectory() as directory:
        files = make_certificate(Path(directory))
        results = measure(files, rate=args.rate, seconds=args.seconds, compare=compare)
    ratio = results["webhook"]["p99_ms"] / results["baseline"]["p99_ms"]
    if args.json:
        print(
            json.dumps({"rate": args.rate, "seconds": args.seconds, "p99_ratio": ratio, **results}, indent=2)
        )
        return 0
    print(f"open loop {args.rate:g} req/s for {args.seconds:g} s per server over TLS keep-alive,", end=" ")
    print(f"{CLIENTS} client connections; latency from each request's scheduled send time")
    print(f"{'server':<10}{'requests':>10}{'errors':>8}", end="")
    print(f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'CPU ms/req':>12}")
    for kind, row in results.items():
        print(
            f"{kind:<10}{row['requests']:>10.0f}{row['errors']:>8.0f}"
            f"{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['max_ms']:>9.2f}"
            f"{row['cpu_ms_per_request']:>12.3f}"
        )
    p99 = results["webhook"]["p99_ms"]
    print(f"webhook p99 {p99:.2f} ms (target <= 10 ms: {'met' if p99 <= 10 else 'MISSED'})")
    print(f"p99 ratio webhook/baseline {ratio:.2f} (target <= 2: {'met' if ratio <= 2 else 'MISSED'})")
    cpu_ratio = results["webhook"]["cpu_ms_per_request"] / results["baseline"]["cpu_ms_per_request"]
    print(f"CPU per request webhook/baseline {cpu_ratio:.2f}")
    for label in compare:
        p99_ratio = results["webhook"]["p99_ms"] / results[label]["p99_ms"]
        cpu_ratio = results["webhook"]["cpu_ms_per_request"] / results[label]["cpu_ms_per_request"]
        print(f"webhook/{label}: p99 {p99_ratio:.2f}, CPU per request {cpu_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
