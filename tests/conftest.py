"""Shared fixtures. Each real component's fixtures live in its own ``tests/support`` module."""

pytest_plugins = [
    "tests.support.registry",
    "tests.support.oci",
    "tests.support.containerd",
    "tests.support.agent_image",
    "tests.support.apiserver",
    "tests.support.kserve",
    "tests.support.cluster",
    "tests.support.service_route",
    "tests.support.agent_deploy",
]
