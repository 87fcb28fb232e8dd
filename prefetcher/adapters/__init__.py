"""Adapters: the only modules that talk to the outside world (CRI, registries, Kubernetes, disk)."""
