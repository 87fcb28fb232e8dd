"""The exception hierarchy of the project.

Adapters translate third-party errors into these at their boundary and raise them ``from`` the
cause, so the core and the agent never see a ``grpc.RpcError`` or an HTTP library's exception.
"""

from enum import StrEnum


class PrefetchError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(PrefetchError):
    """A configuration or models document is invalid; the message names the key and value."""


class InvalidReferenceError(PrefetchError):
    """A model URI or image reference is malformed."""


class RuntimeUnavailableError(PrefetchError):
    """The container runtime's CRI socket is missing, refused, not permitted or timing out."""


class PullFailure(StrEnum):
    """Why a pull failed: the ``reason`` label of ``prefetcher_pulls_total{outcome="failed"}``."""

    UNRESOLVED = "unresolved"  # the registry lookup before the pull failed
    NOT_FOUND = "not_found"
    UNAUTHORIZED = "unauthorized"
    NO_SPACE = "no_space"
    TIMEOUT = "timeout"
    STALLED = "stalled"
    OVER_BUDGET = "over_budget"
    CANCELLED = "cancelled"
    RUNTIME_UNAVAILABLE = "runtime_unavailable"
    ERROR = "error"


class PullFailedError(PrefetchError):
    """The runtime could not pull an image; ``reason`` is a bounded label for metrics."""

    def __init__(self, message: str, *, reason: PullFailure = PullFailure.ERROR) -> None:
        super().__init__(message)
        self.reason = reason


class RemoveFailedError(PrefetchError):
    """The runtime could not remove an image."""


class RegistryError(PrefetchError):
    """A registry answered with an error or could not be reached.

    ``status`` is the HTTP status when there was one (401, 404, 500…), else ``None``.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def reason(self) -> str:
        """A bounded label for metrics and Events."""
        if self.status is None:
            return "unreachable"
        return {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(
            self.status, "server_error" if self.status >= 500 else "client_error"
        )


class CredentialsError(PrefetchError):
    """A workload's registry credentials could not be read: its ServiceAccount or a pull secret is
    missing, not readable by the agent, or malformed. The message names them, never a secret."""


class StateError(PrefetchError):
    """The agent's state file could not be read or written."""


class KubeError(PrefetchError):
    """The Kubernetes API server answered with an error or could not be reached."""
