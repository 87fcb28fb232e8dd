"""Registry credentials in docker's formats: ``config.json`` and Kubernetes image pull Secrets.

Pure parsing, shared by the node's ``registries.authFile`` and the pull secrets of workloads. A
malformed document raises ``ConfigError`` naming the key at fault, never a value: the values are
secrets.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefetcher.errors import ConfigError
from prefetcher.ports import Credentials

_DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")
# The Secret types kubelet reads image pull credentials from, and the data key of each.
SECRET_KEYS = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson", "kubernetes.io/dockercfg": ".dockercfg"}


def server_host(server: str) -> str:
    """The registry host a ``config.json`` key names (``https://index.docker.io/v1/`` -> docker.io)."""
    host = re.sub(r"^[a-z]+://", "", server.strip()).split("/", 1)[0].lower()
    return "docker.io" if host in _DOCKER_HUB_ALIASES else host


def parse_docker_config(text: str) -> dict[str, Credentials]:
    """Credentials per registry host from a docker ``config.json`` (``auths`` only)."""
    try:
        auths = json.loads(text).get("auths") or {}
    except (ValueError, AttributeError) as err:
        raise ConfigError(f"docker config: not a JSON object: {err}") from err
    return parse_auths(auths)


def parse_auths(auths: object) -> dict[str, Credentials]:
    """Credentials per registry host from an ``auths`` object (also the whole legacy ``.dockercfg``)."""
    if not isinstance(auths, dict):
        raise ConfigError("docker config: auths is not an object")
    found: dict[str, Credentials] = {}
    for server, entry in auths.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"docker config: auths.{server} is not an object")
        username, password = str(entry.get("username", "")), str(entry.get("password", ""))
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
            except ValueError as err:  # binascii.Error and UnicodeDecodeError
                # The value is a secret: name the key, not the value.
                raise ConfigError(f"docker config: auths.{server}.auth is not base64") from err
            username, _, password = decoded.partition(":")
        creds = Credentials(username, password, str(entry.get("identitytoken", "")))
        if creds != Credentials():
            found[server_host(server)] = creds
    return found


def read_docker_config(path: str | Path) -> dict[str, Credentials]:
    """``parse_docker_config`` of a file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"docker config {str(path)!r}: cannot read: {err.strerror}") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"docker config {str(path)!r}: not valid UTF-8 (byte offset {err.start})") from err
    return parse_docker_config(text)


def secret_credentials(secret: Mapping[str, Any]) -> dict[str, Credentials]:
    """Credentials per registry host of an image pull Secret as the API returns it (JSON-decoded)."""
    kind = secret.get("type")
    key = SECRET_KEYS.get(kind) if isinstance(kind, str) else None
    if key is None:
        raise ConfigError(f"type {kind!r} is not one of {', '.join(SECRET_KEYS)}")
    data = secret.get("data")
    encoded = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(encoded, str):
        raise ConfigError(f"data has no {key} key")
    try:
        text = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise ConfigError(f"data.{key} is not base64 of UTF-8 text") from err
    if key == ".dockerconfigjson":
        return parse_docker_config(text)
    try:  # the legacy format is the ``auths`` object alone
        return parse_auths(json.loads(text))
    except ValueError as err:
        raise ConfigError(f"data.{key} is not JSON") from err
