"""The one place that builds object graphs: one module per long-running command.

``prefetcher.cli`` parses flags into the frozen options of these modules; ``agent`` (with
``feed``, the model sources) and ``webhook`` read files and environment, build the adapters and
pass them down as keyword arguments. Nothing below this package reads flags or wires itself.
"""
