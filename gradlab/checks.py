"""Checks of single config values: each takes a value and returns an error message, or None when it is valid.

Registry entries declare their parameters with these (a clipping rule in ``gradlab.remedies``), and
``gradlab.rules`` declares every config key's; this module imports nothing of gradlab but the
did-you-mean helper and the vocabulary's limits, so both can, and so can the reading side (which never
imports torch): ``directory_name`` checks a results folder's names as it checks a config's.
"""

from __future__ import annotations

import math

from gradlab.vocabulary import MAX_ID_BYTES
from gradlab.yamlfile import did_you_mean


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite int or float: YAML's ``.inf`` and ``.nan`` are floats, yet no key takes them (a learning
    rate of inf trains nothing, and JSON, where a run's config is stored, has no inf or nan)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _not_a_number(v) -> str:
    """The message for a value ``is_number`` refuses: a non-finite float is named as such."""
    if isinstance(v, float) and not math.isfinite(v):
        return f"expected a finite number, got {v!r}"
    return f"expected a number, got {v!r}"


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


def int_between(lo, hi, why: str):
    """An integer in [lo, hi]; ``why`` says what the upper bound protects (shown when it is passed)."""
    at_least = int_at_least(lo)

    def check(v):
        if msg := at_least(v):
            return msg
        if v > hi:
            return f"must be at most {hi:,} ({why}), got {v:,}"
    return check


def positive_number(v):
    if not is_number(v):
        return _not_a_number(v)
    if not v > 0:
        return f"must be positive, got {v}"


def non_negative_number(v):
    if not is_number(v):
        return _not_a_number(v)
    if not v >= 0:
        return f"must be zero or positive, got {v}"


def percentile(v):
    if not is_number(v):
        return _not_a_number(v)
    if not 0 < v <= 100:
        return f"must be in (0, 100], got {v}"


def fraction(v):
    if not is_number(v):
        return _not_a_number(v)
    if not 0 < v < 1:
        return f"must be between 0 and 1 (exclusive), got {v}"


def above_one(v):
    if not is_number(v):
        return _not_a_number(v)
    if not v > 1:
        return f"must be greater than 1, got {v}"


def string(v):
    if not isinstance(v, str):
        return f"expected a string, got {v!r}"


def directory_name(v):
    """A name that is one directory name, and never a path: a config's ``name`` (its experiment's folder
    under --out), and the same name read back from a results folder, which may come from anyone (plots,
    reports and exports build paths from it: ``/etc`` or ``../x`` would write outside their folder)."""
    if not isinstance(v, str) or not v or not all(c.isalnum() or c in "-_." for c in v) or v[0] == ".":
        return f"expected a name of letters, digits, '-', '_' or '.', got {v!r}"
    if len(v.encode()) > MAX_ID_BYTES:  # a directory name, like a run id
        return f"at most {MAX_ID_BYTES} bytes (a directory name), got {len(v.encode())}"


def boolean(v):
    if not isinstance(v, bool):
        return f"expected true or false, got {v!r}"


def optional(check):
    return lambda v: None if v is None else check(v)


def resolve_tbptt(v) -> int | dict | None:
    """``null`` | ``k`` | ``{k1: 5, k2: 10}`` -> None | k | {"k1": 5, "k2": 10}; {k1: k, k2: k} -> k.

    TBPTT(k1, k2) (Williams & Peng 1990): update every k1 steps, back-propagating
    k2 >= k1 steps; the plain window k is k1 = k2 = k, written as the integer.
    """
    if v is None or (is_int(v) and v >= 1):
        return v
    if is_int(v):
        raise ValueError(f"a window must be at least 1 step, got {v}")
    if not isinstance(v, dict):
        raise ValueError(f"expected null, a window length (integer) or {{k1: ..., k2: ...}}, got {v!r}")
    problems = [f"tbptt has no key {k!r}{did_you_mean(k, ('k1', 'k2'))}; valid: k1, k2"
                for k in v if k not in ("k1", "k2")]
    problems += [f"tbptt.{k}: missing" for k in ("k1", "k2") if k not in v]
    problems += [f"tbptt.{k}: {msg}" for k in ("k1", "k2") if k in v and (msg := int_at_least(1)(v[k]))]
    if not problems and v["k2"] < v["k1"]:
        problems.append(f"tbptt: k2 (steps back-propagated) must be at least k1 (steps per update), "
                        f"got k1={v['k1']}, k2={v['k2']}")
    if problems:
        raise ValueError("\n".join(problems))
    return v["k1"] if v["k1"] == v["k2"] else {"k1": v["k1"], "k2": v["k2"]}
