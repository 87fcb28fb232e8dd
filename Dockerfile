# The prefetcher node agent. Two stages on the same Debian base, so the virtual environment built in
# the first runs unchanged in the second: its interpreter link points at /usr/bin/python3 (3.11 in
# bookworm) in both. The final image holds Python, CA certificates and the venv, no pip or compilers.
# No `# syntax=` line: the built-in frontend suffices, and builds need not fetch one from a registry.

FROM debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/prefetcher
WORKDIR /src
# .dockerignore lets in only what the package needs: pyproject.toml, README.md and prefetcher/.
COPY . .
RUN /opt/prefetcher/bin/pip install . \
    && /opt/prefetcher/bin/pip uninstall -y pip setuptools \
    && /opt/prefetcher/bin/prefetcher version

FROM debian:bookworm-slim
# ca-certificates: registry requests verify TLS against the system store (registries.caFile adds to it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/prefetcher /opt/prefetcher
# The bytecode was compiled at install time; the root filesystem is read-only in the DaemonSet.
ENV PATH=/opt/prefetcher/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root by default, so `prefetcher plan`/`version` and any other use of the image run unprivileged.
# The agent itself needs the CRI socket, which containerd and CRI-O create root-owned with mode 0660
# on most nodes (containerd's [grpc] uid/gid can change that); connecting needs write permission on
# the socket, so the DaemonSet overrides this with runAsUser 0 and no capabilities at all (see
# deploy/agent/daemonset.yaml). uid 65532 is the conventional "nonroot" user; it needs no passwd entry.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["prefetcher"]
CMD ["agent", "--config", "/etc/modelcar-prefetcher/agent.yaml", "--models", "/etc/modelcar-prefetcher/models.yaml"]
