"""Constructor-argument checks shared by the energies (errors name the parameter and value)."""

from __future__ import annotations

import math

__all__ = ["check_int", "check_real", "check_positive", "check_non_negative"]


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``.

    Args:
        name: Parameter name used in the error message.
        value: Value to check (``bool`` is rejected).
        minimum: Smallest allowed value.

    Raises:
        ValueError: If ``value`` is not an integer or is smaller than ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real(name: str, value: object) -> float:
    """Return ``value`` as a finite ``float``.

    Args:
        name: Parameter name used in the error message.
        value: Value to check.

    Raises:
        ValueError: If ``value`` is not a real number or is not finite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a finite ``float > 0``.

    Raises:
        ValueError: If ``value`` is not a finite number ``> 0``.
    """
    v = check_real(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def check_non_negative(name: str, value: object) -> float:
    """Return ``value`` as a finite ``float >= 0``.

    Raises:
        ValueError: If ``value`` is not a finite number ``>= 0``.
    """
    v = check_real(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v
