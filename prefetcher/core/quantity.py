"""Kubernetes resource quantities (``2``, ``500m``, ``1.5Gi``, ``1e3``): one grammar, exact values.

The grammar is apimachinery's ``resource.Quantity``; values are ``Fraction`` so that sums and
comparisons of milli-units are exact, as the scheduler's are.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_SUFFIX = r"(?:(Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE])|[eE]([+-]?[0-9]+))?"
UNSIGNED_QUANTITY = _NUMBER + _SUFFIX
"""A quantity without a sign, as a resource request is written (a pattern for ``re`` and JSON Schema)."""
_QUANTITY = re.compile(rf"([+-]?{_NUMBER}){_SUFFIX}")
_SUFFIXES = {
    "": Fraction(1), "m": Fraction(1, 1000),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9),
    "T": Fraction(10**12), "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30),
    "Ti": Fraction(2**40), "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}  # fmt: skip
_MAX_EXPONENT = 1000  # bounds the work done on a hostile "1e999999999"


def parse_quantity(text: str) -> Fraction:
    """The exact value of a Kubernetes quantity such as ``2``, ``500m``, ``1.5Gi`` or ``1e3``."""
    match = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid quantity {text!r}")
    number, suffix, exponent = match.groups()
    value = Fraction(number)
    if exponent is None:
        return value * _SUFFIXES[suffix or ""]
    power = int(exponent)
    if abs(power) > _MAX_EXPONENT:
        raise ValueError(f"quantity exponent out of range in {text!r}")
    return value * Fraction(10) ** power


def format_quantity(value: Fraction) -> str:
    """A plain decimal form of ``value`` that ``parse_quantity`` reads back exactly."""
    sign, value = ("-", -value) if value < 0 else ("", value)
    denominator = value.denominator
    twos = (denominator & -denominator).bit_length() - 1
    rest, fives = denominator >> twos, 0
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        raise ValueError(f"{value} has no finite decimal form")
    digits = max(twos, fives)
    scaled = str(value.numerator * 10**digits // denominator).rjust(digits + 1, "0")
    if not digits:
        return sign + scaled
    return f"{sign}{scaled[:-digits]}.{scaled[-digits:]}"
