"""Test support: oci (filled in by its owner)."""
