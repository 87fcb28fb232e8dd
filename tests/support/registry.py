"""Test support: registry (filled in by its owner)."""
