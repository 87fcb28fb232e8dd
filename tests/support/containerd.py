"""Test support: containerd (filled in by its owner)."""
