"""The command line: flags in, output and exit code out. ``prefetcher.wiring`` builds the objects.

Each command is one ``_add_*`` function that declares its flags and the handler ``main`` calls;
a new command is one more such function in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prefetcher import __version__
from prefetcher.agent.report import plan_document, print_plan
from prefetcher.errors import PrefetchError
from prefetcher.wiring.agent import AgentOptions, dry_run, run_agent
from prefetcher.wiring.webhook import WebhookOptions, serve_webhook

if TYPE_CHECKING:
    from typing import TypeAlias

    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prefetcher`` command."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PrefetchError as err:
        print(f"prefetcher: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefetcher", description="Keep modelcar images warm on this node.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _add_agent(sub: Subcommands) -> None:
    agent = sub.add_parser("agent", help="run the node agent")
    _agent_flags(agent)
    agent.add_argument("--once", action="store_true", help="carry out one full plan and exit")
    agent.set_defaults(func=_run_agent)


def _add_plan(sub: Subcommands) -> None:
    plan = sub.add_parser("plan", help="show what the agent would pull, evict and skip; changes nothing")
    _agent_flags(plan)
    plan.add_argument("-o", "--output", choices=("text", "json"), default="text")
    plan.set_defaults(func=_run_plan)


def _add_webhook(sub: Subcommands) -> None:
    webhook = sub.add_parser("webhook", help="serve the modelcar wiring admission webhook (HTTPS)")
    webhook.add_argument("--config", type=Path, required=True, help="webhook YAML config")
    webhook.add_argument(
        "--cert", type=Path, required=True, help="serving certificate (PEM), reloaded on change"
    )
    webhook.add_argument("--key", type=Path, required=True, help="private key (PEM), reloaded on change")
    webhook.add_argument("--listen", default="0.0.0.0:8443", help="HOST:PORT to serve on")
    webhook.set_defaults(func=_run_webhook)


def _add_version(sub: Subcommands) -> None:
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _args: print(f"prefetcher {__version__}") or 0)


def _agent_flags(p: argparse.ArgumentParser) -> None:
    """The flags ``agent`` and ``plan`` share."""
    p.add_argument("--config", type=Path, required=True, help="YAML config (the ConfigMap's agent.yaml)")
    p.add_argument(
        "--models", type=Path, help="models file to keep warm; without it, follow InferenceServices"
    )
    p.add_argument(
        "--inferenceservices",
        action="store_true",
        help="follow InferenceServices for this node even with --models (then both are kept warm)",
    )
    p.add_argument(
        "--node-name", default=os.environ.get("NODE_NAME", ""), help="this node (default $NODE_NAME)"
    )
    p.add_argument(
        "--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: in-cluster config"
    )


def _agent_options(args: argparse.Namespace) -> AgentOptions:
    return AgentOptions(
        config_path=args.config,
        models_path=args.models,
        follow_inferenceservices=args.inferenceservices,
        node_name=args.node_name,
        kubeconfig=args.kubeconfig,
        once=getattr(args, "once", False),
    )


def _run_agent(args: argparse.Namespace) -> int:
    run = run_agent(_agent_options(args))
    if run.report is not None:
        print_plan(run.report.plan, failed=run.report.failed)
    return run.code


def _run_plan(args: argparse.Namespace) -> int:
    plan = dry_run(_agent_options(args))
    if args.output == "json":
        print(json.dumps(plan_document(plan), indent=2, default=str))
    else:
        print_plan(plan, failed={})
    return 0


def _run_webhook(args: argparse.Namespace) -> int:
    return serve_webhook(
        WebhookOptions(config_path=args.config, cert_path=args.cert, key_path=args.key, listen=args.listen)
    )


COMMANDS: tuple[Callable[[Subcommands], None], ...] = (
    _add_agent,
    _add_plan,
    _add_webhook,
    _add_version,
)
