"""The node agent: resolution, reconcile loop, pull execution and health endpoints."""
