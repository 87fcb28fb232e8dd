"""Generate the Helm chart's values.schema.json and README.md; run after changing values or config.

    .venv/bin/python hack/chart_docs.py          # rewrite both files
    .venv/bin/python hack/chart_docs.py --check  # exit 1 when either is out of date

The schema's ``config`` part is ``prefetcher.config_schema.json_schema()``: the agent's own fields,
types, limits and docs, the same ones the README's configuration reference is rendered from. The
rest of the schema is written here. The README's values table takes each description from the
``# --`` comment above a key in values.yaml, and the ``config.*`` rows from the field docs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefetcher.config import reference_rows  # noqa: E402
from prefetcher.config_schema import json_schema  # noqa: E402

CHART = ROOT / "deploy" / "helm" / "modelcar-prefetcher"


def _obj(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties, **extra}


STR: dict[str, Any] = {"type": "string"}
BOOL: dict[str, Any] = {"type": "boolean"}
MAP: dict[str, Any] = {"type": "object"}
STR_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
LIST: dict[str, Any] = {"type": "array"}
DIGEST = {"type": "string", "pattern": r"^$|^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$"}
NAME = {"type": "string", "pattern": r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}


def _service_account() -> dict[str, Any]:
    return _obj({"create": BOOL, "name": NAME, "annotations": STR_MAP})


def _pod(**extra: Any) -> dict[str, Any]:
    """Keys every workload of the chart has."""
    return {
        "podAnnotations": STR_MAP,
        "podLabels": STR_MAP,
        "podSecurityContext": MAP,
        "securityContext": MAP,
        "resources": MAP,
        "nodeSelector": STR_MAP,
        "tolerations": {"type": "array", "items": {"type": "object"}},
        "affinity": MAP,
        "priorityClassName": STR,
        "updateStrategy": MAP,
        "hostNetwork": BOOL,
        **extra,
    }


def chart_schema() -> dict[str, Any]:
    """The whole values.schema.json."""
    webhook = _obj(
        _pod(
            enabled=BOOL,
            replicas={"type": "integer", "minimum": 0},
            port={"type": "integer", "minimum": 1, "maximum": 65535},
            failurePolicy={"enum": ["Fail", "Ignore"]},
            timeoutSeconds={"type": "integer", "minimum": 1, "maximum": 30},
            serviceAccount=_service_account(),
            podDisruptionBudget=_obj({"enabled": BOOL, "minAvailable": {"type": ["integer", "string"]}}),
            certificates=_obj(
                {
                    "source": {"enum": ["helm", "cert-manager"]},
                    "validityDays": {"type": "integer", "minimum": 1},
                    "renewDays": {"type": "integer", "minimum": 0},
                }
            ),
            # The webhook validates its own file at start-up (prefetcher.webhook.config).
            config=MAP,
        )
    )
    properties = {
        "nameOverride": NAME,
        "fullnameOverride": NAME,
        "commonLabels": STR_MAP,
        "image": _obj(
            {
                "repository": {"type": "string", "minLength": 1},
                "tag": STR,
                "digest": DIGEST,
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            }
        ),
        "imagePullSecrets": {"type": "array", "items": _obj({"name": STR}, required=["name"])},
        "serviceAccount": _service_account(),
        "rbac": _obj({"create": BOOL}),
        **_pod(),
        "hostPaths": _obj({"criSocketDir": STR, "imageFs": STR, "stateDir": STR}),
        "models": {
            "type": "array",
            "items": _obj(
                {"uri": {"type": "string", "minLength": 1}, "priority": {"type": "integer"}}, required=["uri"]
            ),
        },
        "config": json_schema(),
        "webhook": webhook,
        "serviceMonitor": _obj({"enabled": BOOL, "interval": STR, "labels": STR_MAP}),
        "prometheusRule": _obj({"enabled": BOOL, "labels": STR_MAP, "runbookBaseURL": STR}),
        "grafanaDashboard": _obj(
            {"enabled": BOOL, "labels": STR_MAP, "annotations": STR_MAP, "namespace": STR}
        ),
    }
    return {"$schema": "http://json-schema.org/draft-07/schema#", **_obj(properties)}


def value_docs(text: str) -> list[tuple[str, str]]:
    """``(dotted key, description)`` for each key of values.yaml preceded by ``# --`` lines."""
    rows: list[tuple[str, str]] = []
    path: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
        elif stripped.startswith("#") and pending is not None:
            pending.append(stripped[1:].strip())
        elif stripped and not stripped.startswith(("#", "-")) and ":" in stripped:
            indent = len(line) - len(line.lstrip())
            path = [p for p in path if p[0] < indent] + [(indent, stripped.split(":", 1)[0])]
            if pending is not None:
                rows.append((".".join(k for _, k in path), " ".join(pending)))
            pending = None
    return rows


def _default(values: dict[str, Any], key: str) -> str:
    value: Any = values
    for part in key.split("."):
        value = value[part]
    return json.dumps(value)


def readme() -> str:
    """The chart's README.md."""
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    lines = [
        f"# {chart['name']} Helm chart",
        "",
        "<!-- Generated by hack/chart_docs.py from values.yaml and prefetcher/config.py; do not edit. -->",
        "",
        " ".join(chart["description"].split()),
        "",
        "```sh",
        "helm install modelcar-prefetcher deploy/helm/modelcar-prefetcher \\",
        "  --namespace modelcar-prefetcher --create-namespace \\",
        "  --set image.repository=registry.example.com/platform/modelcar-prefetcher --set image.tag=0.1.0",
        "```",
        "",
        "The operator guide (docs/operator-guide.md) covers the budget, start-up taints and the",
        "models-warm Node condition, alerts and troubleshooting. `values.schema.json` rejects a bad",
        "value with its key before anything is installed.",
        "",
        "## Values",
        "",
        "| key | default | description |",
        "| --- | --- | --- |",
    ]
    for key, doc in value_docs(text):
        lines.append(f"| `{key}` | `{_default(values, key)}` | {doc} |")
    lines += [
        "",
        "## Agent configuration (`config`)",
        "",
        "Rendered into the ConfigMap's `agent.yaml`. `resyncSeconds`, `budget.*`, `pull.*` and",
        "`eviction.*` apply at the agent's next pass after `helm upgrade`; the others at its next start.",
        "",
        "| key | default | description |",
        "| --- | --- | --- |",
    ]
    for key, _shown, doc in reference_rows():
        lines.append(f"| `config.{key}` | `{_default(values['config'], key)}` | {doc} |")
    return "\n".join(lines) + "\n"


def outputs() -> dict[Path, str]:
    """Each generated file and its content."""
    return {
        CHART / "values.schema.json": json.dumps(chart_schema(), indent=2, ensure_ascii=False) + "\n",
        CHART / "README.md": readme(),
    }


def main(argv: list[str]) -> int:
    stale = [path for path, content in outputs().items() if not path.exists() or path.read_text() != content]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run hack/chart_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for path, content in outputs().items():
        path.write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
