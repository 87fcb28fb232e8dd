"""Byte formatting for humans (plans, Events, logs)."""

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(value: int | float) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary units as ``df -h`` and kubectl show them."""
    size = abs(int(value))
    if size < 1024:
        return f"{value:.0f} B"
    unit = min((size.bit_length() - 1) // 10, len(_UNITS) - 1)
    return f"{value / 1024**unit:.1f} {_UNITS[unit]}"
