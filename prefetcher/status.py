"""``prefetcher status`` (also ``kubectl prefetcher status``): the cluster view, per model.

Reads every Node's summary and the InferenceServices with the caller's kubeconfig (read only) and
prints one row per model: the nodes where it fits, and of those how many hold it warm, are
pulling it, wait for a turn, or skipped it (with the reasons), then per InferenceService "warm on N
of M eligible nodes". ``-o wide`` adds the InferenceServices and the nodes not warm; ``-o json``
lists every node by name. Rendering is pure (``document``, ``table``); ``run`` does the reading.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from prefetcher.core.warmth import FleetView, ModelRow, aggregate, isvc_warmth

_DIGEST = re.compile(r"@sha256:([0-9a-f]{12})[0-9a-f]{52}$")
_LISTED = 5  # node names shown per row in the wide table


def add_parser(sub: Any) -> None:
    """The ``status`` subcommand on the CLI's subparsers."""
    status = sub.add_parser("status", help="per model: nodes where it fits, warm, pulling, waiting, skipped")
    status.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: $KUBECONFIG")
    status.add_argument("--context", help="kubeconfig context (default: the current one)")
    status.add_argument("-n", "--namespace", help="only models of InferenceServices in this namespace")
    status.add_argument("-o", "--output", choices=("table", "wide", "json"), default="table")
    status.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the cluster and print the view."""
    # Imported here, as the agent does: the client is not needed to build the parser.
    from prefetcher.adapters.cluster_view import isvc_refs, node_summaries  # noqa: PLC0415
    from prefetcher.adapters.kube_api import api_client  # noqa: PLC0415

    api = api_client(kubeconfig=args.kubeconfig or os.path.expanduser("~/.kube/config"), context=args.context)
    summaries = node_summaries(api)
    view = aggregate(summaries, isvc_refs(api, args.namespace))
    warmth = isvc_warmth(summaries)
    if args.namespace:
        view = only_namespace(view, args.namespace)
        warmth = {k: w for k, w in warmth.items() if k.startswith(f"{args.namespace}/")}
    doc = document(view, {k: (w.warm, w.eligible) for k, w in warmth.items()})
    print(json.dumps(doc, indent=2) if args.output == "json" else table(doc, wide=args.output == "wide"))
    return 0


def only_namespace(view: FleetView, namespace: str) -> FleetView:
    """The rows of models some InferenceService in ``namespace`` wants."""
    rows = tuple(row for row in view.models if any(i.startswith(f"{namespace}/") for i in row.isvcs))
    return replace(view, models=rows)


def document(view: FleetView, warmth: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The ``-o json`` document; the tables are printed from it."""
    return {
        "nodes": view.nodes,
        "nodesWithoutSummary": list(view.silent),
        "unreadableSummaries": dict(sorted(view.unreadable.items())),
        "models": [_model(row) for row in view.models],
        "inferenceServices": [
            {"name": key, "warmNodes": warm, "eligibleNodes": eligible}
            for key, (warm, eligible) in sorted(warmth.items())
        ],
    }


def _model(row: ModelRow) -> dict[str, Any]:
    return {
        "model": row.ref,
        "inferenceServices": list(row.isvcs),
        "fits": row.fits,
        "warm": list(row.warm),
        "pulling": list(row.pulling),
        "waiting": list(row.waiting),
        "skipped": list(row.skipped),
        "reasons": dict(row.reasons),
    }


def table(doc: dict[str, Any], *, wide: bool) -> str:
    """The models table, then the InferenceServices' warmth, as ``kubectl get`` aligns columns."""
    head = ["MODEL", "FITS", "WARM", "PULLING", "WAITING", "SKIPPED", "REASONS"]
    rows = [head + (["INFERENCESERVICES", "NOT-WARM"] if wide else [])]
    for m in doc["models"]:
        counts = [str(m["fits"])] + [str(len(m[s])) for s in ("warm", "pulling", "waiting", "skipped")]
        reasons = ",".join(f"{r}={n}" for r, n in m["reasons"].items()) or "-"
        row = [m["model"] if wide else _DIGEST.sub(r"@sha256:\1", m["model"]), *counts, reasons]
        if wide:
            row += [",".join(m["inferenceServices"]) or "-", _not_warm(m)]
        rows.append(row)
    lines = _align(rows)
    silent = doc["nodesWithoutSummary"]
    lines.append(f"\n{doc['nodes'] - len(silent)} of {doc['nodes']} nodes report models")
    if wide and silent:
        lines[-1] += f"; no summary: {_names(silent)}"
    bad = sorted(doc["unreadableSummaries"].items())
    lines += [f"node {node}: summary unreadable: {reason}" for node, reason in bad[:_LISTED]]
    if len(bad) > _LISTED:
        lines.append(f"+{len(bad) - _LISTED} more nodes with unreadable summaries (-o json lists them)")
    if doc["inferenceServices"]:
        lines.append("")
        lines += _align(
            [["INFERENCESERVICE", "WARMTH"]]
            + [
                [i["name"], f"warm on {i['warmNodes']} of {i['eligibleNodes']} eligible nodes"]
                for i in doc["inferenceServices"]
            ]
        )
    return "\n".join(lines)


def _not_warm(model: dict[str, Any]) -> str:
    names = [f"{n}({state})" for state in ("pulling", "waiting", "skipped") for n in model[state]]
    return _names(names)


def _names(names: Sequence[str]) -> str:
    if not names:
        return "-"
    more = len(names) - _LISTED
    return ",".join(names[:_LISTED]) + (f",+{more}" if more > 0 else "")


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
