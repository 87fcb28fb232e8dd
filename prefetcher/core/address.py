"""``host:port`` listen addresses, parsed one way for the agent's config and both servers' flags."""

from __future__ import annotations

import re

_PORT = r"0*([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
HOST_PORT = rf"^.*:{_PORT}$"
"""The pattern of a valid address, for JSON Schema (``parse_host_port`` accepts exactly these)."""
HOST_PORT_PROBLEM = 'must be host:port (port 0-65535; ":8080" listens on every interface)'
_HOST_PORT = re.compile(HOST_PORT, flags=re.DOTALL)


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (every IPv4 interface) as a bind address.

    Raises ``ValueError`` with ``HOST_PORT_PROBLEM`` for anything else, a port over 65535 included.
    """
    if not isinstance(text, str) or not _HOST_PORT.fullmatch(text):
        raise ValueError(HOST_PORT_PROBLEM)
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)
