"""Server CPU time per AdmissionReview and closed-loop throughput, webhook against a minimal TLS server.

Closed loop: each of ``--connections`` kept-alive HTTPS connections sends its next review as soon
as the last is answered, ``--requests`` in all per round; the servers (the same child processes
as ``webhook_latency.py`` starts) take turns, round by round, so that all see the same background
noise. CPU time is the server process's user + system time over its rounds (``/proc/PID/stat``),
which depends far less on the machine's load than latency does; requests/s shows stalls that
cost no CPU (one connection waiting on a delayed ACK answers ~22 reviews/s).

    .venv/bin/python bench/webhook_cpu.py [--connections 1] [--requests 2000] [--rounds 6] [--compare old=DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webhook_latency import checkouts, cpu_seconds, make_certificate, review, running  # noqa: E402

MAX_REQUESTS = 100_000
MAX_CONNECTIONS = 64
MAX_ROUNDS = 20
WARMUP_REQUESTS = 200


def closed_loop(port: int, ca: Path, *, requests: int, connections: int) -> float:
    """Send ``requests`` reviews over ``connections`` connections, each waiting for its answer; seconds."""
    context = ssl.create_default_context(cafile=str(ca))
    bodies = [review(f"cpu-{i}") for i in range(64)]
    failures: list[str] = []

    def worker(count: int) -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        try:
            for index in range(count):
                headers = {"Content-Type": "application/json"}
                conn.request("POST", "/mutate", body=bodies[index % len(bodies)], headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(str(response.status))
        except (OSError, http.client.HTTPException) as error:
            failures.append(repr(error))
        finally:
            conn.close()

    shares = [requests // connections + (i < requests % connections) for i in range(connections)]
    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
    return time.perf_counter() - started


def measure(
    files: tuple[Path, Path, Path], *, requests: int, connections: int, rounds: int, compare: dict[str, Path]
) -> dict[str, list[tuple[float, float]]]:
    """Per server, per round: (CPU ms per request, requests per second)."""
    ca, cert, key = files
    with contextlib.ExitStack() as stack:
        children = {
            "baseline": stack.enter_context(running("baseline", cert, key)),
            "webhook": stack.enter_context(running("webhook", cert, key)),
        }
        for label, checkout in compare.items():
            script = checkout / "bench" / "webhook_latency.py"
            children[label] = stack.enter_context(running("webhook", cert, key, script=script))
        for child in children.values():
            closed_loop(child.port, ca, requests=WARMUP_REQUESTS, connections=connections)
        rows: dict[str, list[tuple[float, float]]] = {kind: [] for kind in children}
        kinds = list(children)
        for index in range(rounds):
            for kind in kinds if index % 2 == 0 else reversed(kinds):
                before = cpu_seconds(children[kind].pid)
                seconds = closed_loop(children[kind].port, ca, requests=requests, connections=connections)
                used = cpu_seconds(children[kind].pid) - before
                rows[kind].append((used / requests * 1000, requests / seconds))
    return rows


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1, help="kept-alive client connections")
    parser.add_argument("--requests", type=int, default=2000, help="reviews per server per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per server, alternating")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR")
    args = parser.parse_args()
    if not (
        0 < args.connections <= MAX_CONNECTIONS
        and 0 < args.requests <= MAX_REQUESTS
        and 0 < args.rounds <= MAX_ROUNDS
    ):
        parser.error(f"limits: connections {MAX_CONNECTIONS}, requests {MAX_REQUESTS}, rounds {MAX_ROUNDS}")
    compare = checkouts(parser, args.compare)
    with tempfile.TemporaryDirectory() as directory:
        rows = measure(
            make_certificate(Path(directory)),
            requests=args.requests,
            connections=args.connections,
            rounds=args.rounds,
            compare=compare,
        )
    print(f"closed loop, {args.connections} connection(s), {args.requests} reviews per round,", end=" ")
    print(f"{args.rounds} rounds")
    print(f"{'server':<10}{'CPU ms/req':>12}{'req/s':>9}   CPU ms/req of each round")
    cpu = {kind: median([c for c, _ in values]) for kind, values in rows.items()}
    for kind, values in rows.items():
        each = " ".join(f"{c:.3f}" for c, _ in values)
        print(f"{kind:<10}{cpu[kind]:>12.3f}{median([r for _, r in values]):>9.0f}   {each}")
    for kind, value in cpu.items():
        if kind != "webhook":
            print(f"CPU per request webhook/{kind} {cpu['webhook'] / value:.2f} (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
