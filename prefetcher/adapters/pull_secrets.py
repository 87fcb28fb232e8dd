"""The ``PullSecrets`` port from the Kubernetes API: a model's ServiceAccount and its pull secrets.

Read on demand when a model is resolved or pulled, with ``get`` only: no list and no watch, so the
agent holds no Secret beyond a short cache and needs no cluster-wide grant. The grant is the
optional per-namespace Role in ``deploy/agent/optional/pull-secrets-role.yaml``; without it a read
is forbidden and the error says which namespace lacks the RoleBinding. Which ServiceAccount and
secrets apply is decided by ``core.pull_identity`` from the InferenceService's record. Answers and
errors alike are cached for ``ttl_seconds``. Used from the reconcile thread only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client

from prefetcher.adapters.docker_config import secret_credentials, server_host
from prefetcher.adapters.kube_api import KubeStatusError, kube_errors
from prefetcher.core.isvc import IsvcModels
from prefetcher.core.pull_identity import PullIdentity, pull_identities
from prefetcher.errors import ConfigError, CredentialsError, KubeError
from prefetcher.ports import Clock, Credentials

log = logging.getLogger(__name__)
ROLE_FILE = "deploy/agent/optional/pull-secrets-role.yaml"
Keyring = dict[str, Credentials]


class ServiceAccountPullSecrets:
    """Credentials from the image pull secrets of the pods an InferenceService's component runs."""

    def __init__(
        self,
        api: Any,
        *,
        records: Callable[[str], IsvcModels | None],
        clock: Clock,
        ttl_seconds: float = 60.0,
        timeout_seconds: float = 10.0,
        max_cached: int = 4096,
    ) -> None:
        self._core: Any = client.CoreV1Api(api)
        self._records, self._clock = records, clock
        self._ttl, self._timeout, self._max_cached = ttl_seconds, timeout_seconds, max_cached
        self._cache: dict[tuple[str, str, str], tuple[float, Any]] = {}

    def credentials_for(self, registry: str, sources: tuple[str, ...]) -> Credentials | None:
        """Credentials for ``registry`` of the first source that has some; see ``PullSecrets``."""
        problems: list[CredentialsError] = []
        host = server_host(registry)
        for source in sources:
            record = self._records(source)
            for identity in pull_identities(record, registry) if record is not None else ():
                try:
                    found = self._keyring(identity).get(host)
                except CredentialsError as error:
                    problems.append(error)
                    continue
                if found is not None:
                    return found
        if problems:
            raise problems[0]
        return None

    def _keyring(self, identity: PullIdentity) -> Keyring:
        """Credentials per host of the identity's secrets; the first secret naming a host wins."""
        names = identity.image_pull_secrets or self._account_secrets(identity)
        keyring: Keyring = {}
        for name in names:
            for host, creds in self._cached("secret", identity.namespace, name, self._secret).items():
                keyring.setdefault(host, creds)
        return keyring

    def _account_secrets(self, identity: PullIdentity) -> tuple[str, ...]:
        names: tuple[str, ...] = self._cached(
            "serviceaccount", identity.namespace, identity.service_account, self._account
        )
        return names

    def _account(self, namespace: str, name: str) -> tuple[str, ...]:
        account = self._get("ServiceAccount", namespace, name, self._core.read_namespaced_service_account)
        refs = account.get("imagePullSecrets") or []
        return tuple(str(r["name"]) for r in refs if isinstance(r, Mapping) and r.get("name"))

    def _secret(self, namespace: str, name: str) -> Keyring:
        secret = self._get("image pull secret", namespace, name, self._core.read_namespaced_secret)
        try:
            return secret_credentials(secret)
        except ConfigError as error:
            raise CredentialsError(f"image pull secret {namespace}/{name}: {error}") from error

    def _cached(self, kind: str, namespace: str, name: str, load: Callable[[str, str], Any]) -> Any:
        """``load(namespace, name)``, or its answer or error of less than ``ttl_seconds`` ago."""
        now, key = self._clock.monotonic(), (kind, namespace, name)
        hit = self._cache.get(key)
        if hit is None or hit[0] <= now:
            try:
                value: Any = load(namespace, name)
            except CredentialsError as error:
                value = error
            if len(self._cache) >= self._max_cached:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            hit = self._cache[key] = (now + self._ttl, value)
        if isinstance(hit[1], CredentialsError):
            raise hit[1]
        return hit[1]

    def _get(self, what: str, namespace: str, name: str, read: Callable[..., Any]) -> Mapping[str, Any]:
        """One object as decoded JSON; every failure a ``CredentialsError`` that says what to do."""
        try:
            with kube_errors(f"reading {what} {namespace}/{name}"):
                response = read(
                    name, namespace, _preload_content=False, _request_timeout=(self._timeout, self._timeout)
                )
                try:
                    document = json.loads(response.data)
                finally:
                    response.release_conn()
        except KubeStatusError as error:
            if error.status == 403:
                raise CredentialsError(
                    f"reading {what} {namespace}/{name} is forbidden: the RoleBinding that lets the agent "
                    f"read pull secrets in namespace {namespace} is missing "
                    f"(kubectl apply -n {namespace} -f {ROLE_FILE})"
                ) from error
            if error.status == 404:
                raise CredentialsError(f"{what} {namespace}/{name} not found") from error
            raise CredentialsError(str(error)) from error
        except KubeError as error:
            raise CredentialsError(str(error)) from error
        if not isinstance(document, Mapping):
            raise CredentialsError(f"reading {what} {namespace}/{name}: the answer is not an object")
        return document
