"""modelcar-prefetcher: keeps pinned modelcar images warm on Kubernetes nodes."""

__version__ = "0.1.0"
