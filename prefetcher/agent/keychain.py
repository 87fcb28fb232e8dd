"""Which registry credentials a model is resolved and pulled with.

A workload's own pull secrets (when ``credentials.serviceAccountPullSecrets`` is on) come first,
then the node's (``registries.authFile``). Secrets that cannot be read do not fail the model: like
kubelet, which warns and pulls anyway, the agent carries on with the node's credentials and keeps
the reason, so a pull that then fails says why the workload's secrets were not used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prefetcher.core.refs import ImageRef
from prefetcher.errors import CredentialsError
from prefetcher.ports import Credentials, PullSecrets


@dataclass(frozen=True)
class Keys:
    """Credentials for one model (None: the runtime's own), and why its secrets were not used."""

    credentials: Credentials | None
    problem: str = ""

    def explain(self, error: str) -> str:
        """``error`` of a lookup or pull made with these keys, with the secrets' problem if any."""
        if not self.problem:
            return error
        return f"{error}; the workload's pull secrets were not used: {self.problem}"


class Keychain:
    """Credentials per model: its workloads' pull secrets, else the node's."""

    def __init__(
        self, *, node: Callable[[str], Credentials | None], pull_secrets: PullSecrets | None = None
    ) -> None:
        self._node, self._pull_secrets = node, pull_secrets

    def keys(self, ref: ImageRef, sources: tuple[str, ...]) -> Keys:
        """The credentials to reach ``ref`` for the workloads named by ``sources``."""
        node = self._node(ref.registry)
        if self._pull_secrets is None:
            return Keys(node)
        try:
            own = self._pull_secrets.credentials_for(ref.registry, sources)
        except CredentialsError as error:
            return Keys(node, str(error))
        return Keys(own or node)
