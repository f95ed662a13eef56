"""Checks of single config values: each takes a value and returns an error message, or None when it is valid.

Registry entries declare their parameters with these (a clipping rule in ``gradlab.remedies``), and
``gradlab.rules`` declares every config key's; this module imports nothing of gradlab but the
did-you-mean helper, so both can.
"""

from __future__ import annotations

from gradlab.yamlfile import did_you_mean


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def choice(registry, what):
    """One of the registry's names (a dict's keys, or a tuple), with a did-you-mean."""
    def check(v):
        if not isinstance(v, str):
            return f"expected a {what} name (string), got {v!r}"
        if v not in registry:
            return f"unknown {what} {v!r}{did_you_mean(v, registry)}; valid: {', '.join(registry)}"
    return check


def int_at_least(lo):
    def check(v):
        if not is_int(v):
            return f"expected an integer, got {v!r}"
        if v < lo:
            return f"must be at least {lo}, got {v}"
    return check


def positive_number(v):
    if not is_number(v):
        return f"expected a number, got {v!r}"
    if not v > 0:
        return f"must be positive, got {v}"


def non_negative_number(v):
    if not is_number(v):
        return f"expected a number, got {v!r}"
    if not v >= 0:
        return f"must be zero or positive, got {v}"


def percentile(v):
    if not is_number(v):
        return f"expected a number, got {v!r}"
    if not 0 < v <= 100:
        return f"must be in (0, 100], got {v}"


def fraction(v):
    if not is_number(v):
        return f"expected a number, got {v!r}"
    if not 0 < v < 1:
        return f"must be between 0 and 1 (exclusive), got {v}"


def above_one(v):
    if not is_number(v):
        return f"expected a number, got {v!r}"
    if not v > 1:
        return f"must be greater than 1, got {v}"


def string(v):
    if not isinstance(v, str):
        return f"expected a string, got {v!r}"


def boolean(v):
    if not isinstance(v, bool):
        return f"expected true or false, got {v!r}"


def optional(check):
    return lambda v: None if v is None else check(v)
