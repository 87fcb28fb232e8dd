"""The mutating admission webhook that wires modelcar pods as KServe does, and more safely.

Layers: ``config`` (data), ``patch`` with ``podview``, ``security`` and ``containers`` (the pure
JSONPatch builder), ``handler`` (pure AdmissionReview in and out), ``metrics``, and the I/O at the
edge: ``tls`` (the rotating serving certificate) and ``server`` (HTTPS). ``prefetcher.wiring.webhook``
builds and runs them.
"""
