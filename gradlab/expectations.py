"""Expectations: claims about a comparison table that gate a CI pipeline.

A config may carry an ``expect:`` list. Each entry selects groups with
``where:`` (equality on grouping columns) and asserts on aggregated columns::

    expect:
      - where: {task: adding, cell: lstm}
        solved_rate: ">= 0.66"
        final_loss_mean: "< 0.5 * baseline_loss"
      - where: {cell: vanilla}
        verdict: vanishing+exploding
        vanishing_runs: "> runs / 2"
      - claim: clipping makes runs fail less often, never more
        where: {clip: "norm(1)"}
        versus: {clip: none}
        solved_rate: ">= versus.solved_rate"


A comparison is ``OP EXPR`` with OP one of ``< <= > >= == !=`` and EXPR
arithmetic (``+ - * /``, parentheses) over numbers, the group's aggregated columns
and its ``length``; a bare value means ``==``. With ``versus:`` an EXPR may name ``versus.COLUMN``:
that column of the partner group, the one equal to the selected group in every
grouping column except those ``versus`` sets. ``claim:`` is the sentence the
entry checks, shown in reports. An expectation passes when every group it selects
satisfies every comparison. A gradient flag is asserted on its count, ``exploding_runs``
or ``vanishing_runs`` (``== runs``: every run; ``> runs / 2``: most; ``== 0``: none), the
label on ``verdict`` (the label of most runs: ``vanishing+exploding`` names both flags,
``exploding`` and ``vanishing`` one without the other). This module does not import torch.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field

from gradlab.vocabulary import (
    EXPERIMENT_FILE,
    FLAG_JOIN,
    FULL_BPTT,
    METRICS,
    MIXED,
    TEXT_METRICS,
    VERDICTS,
    hash_matcher,
)
from gradlab.yamlfile import did_you_mean

# The aggregated columns an expectation may assert on: every metric column of the comparison table.
COLUMNS = tuple(METRICS)
TEXT_COLUMNS = TEXT_METRICS
# Grouping columns an EXPR may name besides the aggregated ones, so that a claim can scale
# with the task: ``horizon_median: ">= length / 2"`` holds its meaning at any length.
EXPR_GROUP_COLUMNS = ("length",)
OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_COMPARISON = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(.+?)\s*$")
# An EXPR's size and nesting (operators and parentheses within each other), checked before anything walks it
# recursively: Python's parser raised RecursionError on 3000 minus signs (issue 22). A claim needs a handful.
MAX_EXPR_CHARS = 500
MAX_EXPR_DEPTH = 32
_NUMBER = re.compile(r"^\s*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*$")


@dataclass
class Check:
    column: str
    op: str
    expr: str             # the right-hand side as written
    tree: ast.AST | None  # parsed arithmetic; None for a text comparison


@dataclass
class Expectation:
    index: int
    where: dict
    checks: list[Check] = field(default_factory=list)
    versus: dict | None = None  # the partner group's differing columns, for versus.COLUMN
    claim: str | None = None

    def label(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.where.items()) or "all groups"
        if self.versus:
            where += " versus " + ", ".join(f"{k}={v}" for k, v in self.versus.items())
        return f"[{where}] " + " and ".join(f"{c.column} {c.op} {c.expr}" for c in self.checks)


VERSUS = "versus"


def _uses_versus(tree: ast.AST | None) -> bool:
    return tree is not None and any(isinstance(n, ast.Attribute) for n in ast.walk(tree))


def _shown(text) -> str:
    """``repr(text)``, cut to 60 characters: a message quotes the value, not a page of it."""
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:45] + f"... ({len(str(text)):,} characters)"


def _depth(tree: ast.AST) -> int:
    """The tree's height, without recursion (the tree may be as deep as the parser allowed)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack += [(child, depth + 1) for child in ast.iter_child_nodes(node)]
    return deepest


def _parse_expr(text: str) -> ast.AST:
    """Arithmetic over numbers and column names; anything else is a ValueError."""
    if len(text) > MAX_EXPR_CHARS:
        raise ValueError(f"{_shown(text)} is longer than the {MAX_EXPR_CHARS} characters an expression may be")
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, RecursionError, MemoryError):  # 500 characters of ( or - pass CPython's own limits
        raise ValueError(f"cannot read {_shown(text)} as arithmetic (numbers, columns, + - * / and "
                         "parentheses)") from None
    if _depth(tree) > MAX_EXPR_DEPTH:  # before _value (recursive) or a message's unparse meets it
        raise ValueError(f"{_shown(text)} nests operators deeper than {MAX_EXPR_DEPTH} levels")
    dotted = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id == VERSUS):
                raise ValueError(f"only versus.COLUMN may be dotted in {text!r}")
            if node.attr not in COLUMNS or node.attr in TEXT_COLUMNS:
                numeric = [c for c in COLUMNS if c not in TEXT_COLUMNS]
                raise ValueError(f"unknown column versus.{node.attr} in {text!r}{did_you_mean(node.attr, numeric)}")
        elif id(node) in dotted:  # the versus of versus.COLUMN, checked above
            continue
        elif isinstance(node, ast.Name):
            if node.id in EXPR_GROUP_COLUMNS:
                continue
            if node.id not in COLUMNS or node.id in TEXT_COLUMNS:
                numeric = [c for c in COLUMNS if c not in TEXT_COLUMNS] + list(EXPR_GROUP_COLUMNS)
                raise ValueError(f"unknown column {node.id!r} in {text!r}{did_you_mean(node.id, numeric)}")
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)) or isinstance(node.value, bool):
                raise ValueError(f"only numbers and columns may appear in {text!r}")
        elif not isinstance(node, (ast.BinOp, ast.UnaryOp, ast.USub, ast.UAdd, ast.expr_context, *_ARITH)):
            raise ValueError(f"only + - * / ( ) may appear in {text!r}")
    return tree


def parse_check(column: str, spec) -> Check:
    """``("solved_rate", ">= 0.66")`` -> Check; raises ValueError with the reason."""
    if column not in COLUMNS:
        raise ValueError(f"unknown column {column!r}{did_you_mean(column, COLUMNS)}; valid: {', '.join(COLUMNS)}")
    if column in TEXT_COLUMNS:
        text = str(spec).strip()
        m = re.match(r"^(==|!=)\s*(.+)$", text)
        op, value = (m.group(1), m.group(2)) if m else ("==", text)
        if column == "verdict" and value not in (*VERDICTS, MIXED):
            swapped = FLAG_JOIN.join(reversed(value.split(FLAG_JOIN)))  # exploding+vanishing: the flags' order
            hint = f" (did you mean {swapped!r}?)" if swapped in VERDICTS else did_you_mean(value, (*VERDICTS, MIXED))
            raise ValueError(f"verdict must be {', '.join(VERDICTS)} or {MIXED} (a tie), got {value!r}"
                             f"{hint}; a flag alone: exploding_runs or "
                             "vanishing_runs, e.g. vanishing_runs: \"> runs / 2\"")
        return Check(column, op, value, None)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Check(column, "==", repr(spec), _parse_expr(repr(spec)))
    if not isinstance(spec, str):
        raise ValueError(f"expected a comparison such as '>= 0.5', got {spec!r}")
    m = _COMPARISON.match(spec)
    if not m and _NUMBER.match(spec):  # a quoted bare value: "0.5" means == 0.5, as 0.5 does
        return Check(column, "==", spec.strip(), _parse_expr(spec.strip()))
    if not m:
        raise ValueError(f"expected a comparison such as '>= 0.5' or '< 0.5 * baseline_loss', got {_shown(spec)}")
    return Check(column, m.group(1), m.group(2), _parse_expr(m.group(2)))


def _unknown_columns(path: str, selector: dict, where_columns) -> list[tuple[str, str]]:
    """The keys of a ``where:`` or ``versus:`` mapping that are not grouping columns (none without the columns)."""
    if where_columns is None:
        return []
    return [(f"{path}.{k}", f"unknown grouping column {k!r}{did_you_mean(k, where_columns)}; "
             f"valid: {', '.join(where_columns)}") for k in selector if k not in where_columns]


def parse(entries, where_columns=None) -> tuple[list[Expectation], list[tuple[str, str]]]:
    """Read an ``expect:`` list. Returns (expectations, problems as (key path, message))."""
    problems: list[tuple[str, str]] = []
    if not isinstance(entries, list):
        return [], [("expect", f"expected a list of expectations, got {entries!r}")]
    out = []
    for i, entry in enumerate(entries):
        path = f"expect[{i}]"
        if not isinstance(entry, dict):
            problems.append((path, f"expected a mapping of where: and column: comparison, got {entry!r}"))
            continue
        where = entry.get("where", {})
        if not isinstance(where, dict):
            problems.append((f"{path}.where", f"expected a mapping of column: value, got {where!r}"))
            where = {}
        problems += _unknown_columns(f"{path}.where", where, where_columns)
        versus = entry.get("versus")
        if versus is not None and (not isinstance(versus, dict) or not versus):
            problems.append((f"{path}.versus", f"expected a mapping of column: value, got {versus!r}"))
            versus = None
        problems += _unknown_columns(f"{path}.versus", versus or {}, where_columns)
        claim = entry.get("claim")
        if claim is not None and not isinstance(claim, str):
            problems.append((f"{path}.claim", f"expected a sentence, got {claim!r}"))
            claim = None
        exp = Expectation(i, dict(where), versus=versus, claim=claim)
        for column, spec in entry.items():
            if column in ("where", "versus", "claim"):
                continue
            try:
                exp.checks.append(parse_check(column, spec))
            except ValueError as e:
                problems.append((f"{path}.{column}", str(e)))
        for check in exp.checks:
            if _uses_versus(check.tree) and versus is None:
                problems.append((f"{path}.{check.column}", f"{check.expr!r} names versus.COLUMN but the entry "
                                 "has no versus: mapping"))
        if not exp.checks and not any(p[0].startswith(path) for p in problems):
            problems.append((path, "asserts nothing: add at least one column: comparison"))
        out.append(exp)
    return out, problems


def matches(row: dict, where: dict) -> bool:
    """Equality on grouping columns; numbers compare as numbers, None matches null (and tbptt's ``full``)."""
    for k, want in where.items():
        have = row.get(k)
        if k == "tbptt" and want == FULL_BPTT:  # every table shows full BPTT (tbptt null) as full
            want = None
        if isinstance(want, (int, float)) and isinstance(have, (int, float)):
            if not math.isclose(float(want), float(have)):
                return False
        elif (want is None) != (have is None) or (want is not None and str(want) != str(have)):
            return False
    return True


def _value(tree, row: dict, partner: dict | None = None):
    if isinstance(tree, ast.Constant):
        return tree.value
    if isinstance(tree, ast.Attribute):  # versus.COLUMN
        if partner is None:
            raise ValueError("no versus group matches")
        v = partner.get(tree.attr)
        if v is None:
            raise ValueError(f"versus.{tree.attr} is missing")
        return float(v)
    if isinstance(tree, ast.Name):
        v = row.get(tree.id)
        if v is None:
            raise ValueError(f"{tree.id} is missing for this group")
        return float(v)
    if isinstance(tree, ast.UnaryOp):
        v = _value(tree.operand, row, partner)
        return -v if isinstance(tree.op, ast.USub) else v
    return _ARITH[type(tree.op)](_value(tree.left, row, partner), _value(tree.right, row, partner))


def partner_of(row: dict, versus: dict, rows: list[dict], group_columns: list[str]) -> dict | None:
    """The row equal to ``row`` in every grouping column but those of ``versus``, which it matches."""
    same = {c: row.get(c) for c in group_columns if c not in versus}
    found = [r for r in rows if matches(r, versus) and matches(r, same)]
    return found[0] if len(found) == 1 else None


def evaluate_check(check: Check, row: dict, partner: dict | None = None) -> tuple[bool, object, object]:
    """(passed, observed, expected value) for one group row (and its versus partner)."""
    observed = row.get(check.column)
    if check.tree is None:
        return OPS[check.op](observed, check.expr), observed, check.expr
    try:
        expected = _value(check.tree, row, partner)
    except (ValueError, ZeroDivisionError) as e:
        return False, observed, f"({e})"
    if observed is None or (isinstance(observed, float) and math.isnan(observed)):
        return False, None, expected
    return bool(OPS[check.op](float(observed), expected)), observed, expected


def evaluate(expectations: list[Expectation], rows: list[dict], group_columns: list[str]) -> list[dict]:
    """Every expectation against the comparison rows: one result dict each.

    {"expectation", "passed", "groups": [{"group", "checks": [{column, op, expr, observed,
    expected, passed}]}]}; an expectation whose where matches no group fails.
    """
    report = []
    for exp in expectations:
        selected = [r for r in rows if matches(r, exp.where)]
        groups = []
        for row in selected:
            checks = []
            partner = partner_of(row, exp.versus, rows, group_columns) if exp.versus else None
            for check in exp.checks:
                ok, observed, expected = evaluate_check(check, row, partner)
                checks.append({"column": check.column, "op": check.op, "expr": check.expr,
                               "observed": observed, "expected": expected, "passed": ok})
            groups.append({"group": {c: row.get(c) for c in group_columns}, "checks": checks,
                           "passed": all(c["passed"] for c in checks)})
        report.append({"expectation": exp.label(), "claim": exp.claim, "index": exp.index, "where": exp.where,
                       "passed": bool(groups) and all(g["passed"] for g in groups),
                       "groups": groups, "matched": len(groups)})
    return report


def check_results(root, entries: list | None = None, frame=None, only: set[str] | None = None) -> list[dict]:
    """Evaluate expectations against the runs on disk under ``root``.

    With ``entries`` (an ``expect:`` list, e.g. from ``--expect CONFIG``) they are
    evaluated against every run under root together. Without, each sweep's stored
    expectations (``experiment.json``, written by ``gradlab run``) are evaluated
    against that sweep's runs (``sweep_sets``): the shards of one sweep, each with its
    own copy, are checked as one result set, and a later sweep into the same folder
    (``--set train.steps=500``) with its own runs. ``frame``: the runs under root, if
    the caller has loaded them already (``comparison.load_frame``); ``only``: just the
    runs with these hashes. Returns evaluate()'s result dicts, each with "experiment",
    "sweep" (the command line that stored the expectations) and "runs" (how many runs
    they were applied to) added.
    """
    from pathlib import Path

    from gradlab import comparison

    root = Path(root)
    frame = comparison.load_frame([root], damaged=[]) if frame is None else frame
    if frame.empty:
        return []
    if only is not None:
        frame = frame[frame["run_hash"].map(hash_matcher(only)).astype(bool)]
    if entries is not None:
        sets = [(None, None, entries, None, set())]
    else:
        sets = sweep_sets(root)
    report = []
    for name, sweep, raw, hashes, unclaimed_by in sets:
        parsed, problems = parse(raw)
        if problems:
            raise ValueError("; ".join(f"{path}: {msg}" for path, msg in problems))
        runs = frame if name is None else frame[frame["experiment"] == name]
        # a sweep's record and the folder's names may differ in hash length (a legacy folder resumed)
        if hashes is not None:
            runs = runs[runs["run_hash"].map(hash_matcher(hashes)).astype(bool)]
        runs = runs[~runs["run_hash"].map(hash_matcher(unclaimed_by)).astype(bool)]
        if runs.empty:
            continue
        for exp in parsed:
            by = comparison.DEFAULT_BY + comparison.varying_columns(runs)
            by += [k for k in {**exp.where, **(exp.versus or {})} if k not in by and k in runs.columns]
            rows = comparison.to_records(comparison.compare(runs, by))
            for result in evaluate([exp], rows, by):
                report.append({"experiment": name or str(root), "sweep": sweep, "runs": len(runs), **result})
    return report


def sweep_sets(root) -> list[tuple[str, str | None, list, set | None, set]]:
    """(experiment, sweep's command line, expect list, run hashes, hashes left out) for every sweep
    recorded under ``root`` that stated expectations; sweeps of one command line (shards, resumes)
    are merged.

    An ``experiment.json`` from before sweeps recorded their runs gives its expectations for every
    run of the experiment that no recorded sweep claims (hashes None = all, less those claimed). A damaged
    one raises ``results.Damaged`` (``readers.experiment_record``)."""
    import json

    from gradlab import readers, results

    merged: dict[tuple, tuple] = {}
    legacy: dict[str, list] = {}
    claimed: dict[str, set] = {}
    for path in results.files_named(root, EXPERIMENT_FILE):  # symlinked experiments too
        stored = readers.experiment_record(path)  # raises Damaged: a check cannot pass without its record
        name = stored.get("name")
        recorded = [s for s in stored.get("sweeps", []) if "runs" in s]
        if len(recorded) < len(stored.get("sweeps", [])) or not stored.get("sweeps"):
            legacy.setdefault(name, stored.get("expect") or [])  # sweeps from before runs were recorded
        for s in recorded:
            claimed.setdefault(name, set()).update(s["runs"])
            if not s.get("expect"):
                continue
            command = " ".join(["gradlab run", s.get("source") or "?", *(f"--set {x}" for x in s.get("set", []))])
            key = (name, command, json.dumps(s["expect"], sort_keys=True))
            _, _, expect, hashes, _ = merged.get(key, (name, command, s["expect"], set(), set()))
            merged[key] = (name, command, expect, hashes | set(s["runs"]), set())
    out = list(merged.values())
    for name, expect in legacy.items():
        if expect:
            out.append((name, None, expect, None, claimed.get(name, set())))
    return out
