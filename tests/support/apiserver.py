"""Test support: apiserver (filled in by its owner)."""
