"""A diagnosis in words (issue 23 point 6): which case a group's figures support, and what to try next.

The lessons gradlab is built from ask two questions they leave open: "does the gradient vanish,
or is the task difficult?" and "does the gradient vanish, or are there no long-range
dependencies in the data?". ``diagnose`` answers them from the figures a comparison (or
``gradlab.watch``) already holds, in this order of evidence:

- explodes: most runs flagged ``exploding`` (a non-finite step, a pre-clip norm spike, or a top
  Lyapunov exponent of the forward dynamics above the estimate's error, ``diagnostics.verdict``):
  the gradients of a chaotic recurrence diverge (Mikhaeil, Monfared & Durstewitz, NeurIPS 2022).
  It can go with any case below.
- the data has no dependency that long: given the data's own reach (``data_horizon``, from a
  ``task.window`` grid), the gradient's horizon already covers it.
- gradient does not reach the dependency: most runs flagged ``vanishing`` (the gradient at the
  dependency below ``vanishing_ratio`` of the profile's peak: Bengio, Simard & Frasconi 1994).
- reaches it but the state does not hold it: not vanishing, and the dependency input read back
  from the hidden state (``memory``) scores below FORGET_FRACTION of the way from chance to
  the ceiling a solver's state reaches.
- hard task, not a vanishing gradient: the gradient reaches, the state holds, yet not solved.
- healthy: solved by most runs, no flag.
- cannot tell: what decides is unmeasured (no dependency lag, no memory); said, not guessed.

Remedies come from the registries' own declarations (a cell, clipping rule or model option
says which cases it ``addresses``), never from a list here: ``declared_remedies`` reads them.
The registries import torch and this module must not (the comparison reads it), so
``DECLARED`` holds a copy, as ``vocabulary.CELL_NAMES`` holds the cells' names; a test keeps
the two equal. A caller on the torch side (``gradlab.watch``) may pass ``declared_remedies()``.

Reading side: imports neither torch nor pandas (``import gradlab.diagnosis`` loads neither).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradlab.vocabulary import (
    CASES,
    EXPLODING,
    FORGETS,
    HARD_TASK,
    HEALTHY,
    SHORT_DATA,
    UNREACHED,
    UNTOLD,
    WINDOW_HIDES,
)

# ---------------------------------------------------------------------------
# Every number the rules use, and why.

# A flag holds for a group when at least this share of its finished runs carry it: a tie counts (1 of 2 runs
# vanishing is said, "in 1/2 runs", not hidden). ``expect:`` has no rule of its own (the user writes the
# threshold: the README's example ``vanishing_runs: ">= runs / 2"`` reads a tie the same way, ``"> runs / 2"``
# does not), and a group's ``verdict`` is ``mixed`` on a tie.
MAJORITY = 0.5
# The state holds the dependency when ``memory`` reaches at least this share of the way from
# chance to the ceiling (the score of a state that holds exactly what the task needs,
# ``Task.memory_ceiling``). Half way: a readout that recovers less than half of what is
# recoverable above chance cannot give the loss what a solver's state does.
FORGET_FRACTION = 0.5
# The loss counts as at the memoryless baseline from this loss ratio up (final loss ÷ the
# baseline): within 10 % of guessing. The committed studies' unsolved groups sit at 0.91-1.36,
# their solved ones at or below 0.03.
AT_BASELINE = 0.9
# Cases whose evidence is measured before a remedy acts: the exploding flag counts spikes of the pre-clip
# norm, so a clip in use already treats what it flags, and another rule of the same key is no news. The
# other flags are measured after the cell in use did its work: another cell may still help.
MEASURED_BEFORE_REMEDY = frozenset({EXPLODING})
# How many remedies the terminal's one line names before "+N more" (the rest under --wide).
REMEDIES_SHOWN = 8


@dataclass(frozen=True)
class Diagnosis:
    """``cases``: the case words (``vocabulary.CASES``), the main case first, ``exploding`` with it when it
    holds too; ``text``: one or two short sentences citing the figures (≤ ~200 characters); ``details``:
    longer lines (``--wide``, the report); ``remedies``: config settings to try next, as a user types
    them (``model.cell: lstm``), for the cases found, in the registries' order."""

    cases: tuple[str, ...]
    text: str
    details: tuple[str, ...]
    remedies: tuple[str, ...]

    def as_record(self) -> dict:
        """The JSON object ``compare --format json`` carries as ``diagnosis``."""
        return {"cases": list(self.cases), "text": self.text, "details": list(self.details),
                "remedies": list(self.remedies)}


@dataclass(frozen=True)
class Remedy:
    """One registry entry as something to try: ``setting`` as a config says it (``key: value``), the cases
    it ``addresses``, and for a model option the cells that take it (None: any cell)."""

    setting: str
    addresses: frozenset
    cells: tuple[str, ...] | None = None

    @property
    def key(self) -> str:
        return self.setting.partition(":")[0]

    @property
    def value(self) -> str:
        return self.setting.partition(":")[2].strip()

    @property
    def column(self) -> str:
        """The comparison column the setting lands in: ``model.cell`` -> ``cell``, ``train.clip`` -> ``clip``."""
        return self.key.rpartition(".")[2]


def declared_remedies() -> tuple[Remedy, ...]:
    """The remedies the registries declare: every cell (``gradlab.cells.CELLS``), clipping rule
    (``gradlab.remedies.CLIPS``) and model option (``gradlab.cells.OPTION_REMEDIES``) whose entry
    ``addresses`` a case, in registry order. Imports torch (the registries do): the torch side's."""
    from gradlab.cells import CELLS, OPTION_REMEDIES, takers
    from gradlab.remedies import CLIPS

    out = [Remedy(f"model.cell: {name}", frozenset(c.addresses)) for name, c in CELLS.items() if c.addresses]
    out += [Remedy(f"train.clip: {name}", frozenset(r.addresses)) for name, r in CLIPS.items() if r.addresses]
    out += [Remedy(o.setting, frozenset(o.addresses), tuple(takers(option)))
            for option, o in OPTION_REMEDIES.items() if o.addresses]
    return tuple(out)


_ALL = frozenset({UNREACHED, FORGETS})
# A copy of ``declared_remedies()`` for the reading side (the module docstring says why;
# tests/test_diagnosis.py keeps it equal to the registries').
DECLARED: tuple[Remedy, ...] = (
    Remedy("model.cell: irnn", frozenset({UNREACHED})),
    Remedy("model.cell: orthogonal", frozenset({UNREACHED})),
    Remedy("model.cell: skip", frozenset({UNREACHED})),
    Remedy("model.cell: lstm", _ALL),
    Remedy("model.cell: gru", _ALL),
    *(Remedy(f"train.clip: {k}", frozenset({EXPLODING}))
      for k in ("norm", "value", "param_norm", "autoclip", "agc", "zclip", "recurrent")),
    Remedy("model.init: henaff", frozenset({FORGETS}), ("orthogonal",)),
    Remedy("model.constrain: true", frozenset({UNREACHED, EXPLODING}), ("orthogonal",)),
    Remedy("model.forget_bias: chrono", _ALL, ("lstm", "gru")),
    Remedy("train.omega: 2", frozenset({UNREACHED}), ("vanilla", "irnn", "orthogonal")),
)


# ---------------------------------------------------------------------------
# Reading the figures: a compare record (``<figure>_median``, counts over runs) or one run's
# (``gradlab.watch``'s summary: the figure itself, ``exploding`` and ``vanishing`` as bools).


def _figure(figures: dict, name: str):
    """``name``'s median or, for one run, the figure itself; None when missing, null or NaN."""
    for key in (f"{name}_median", name):
        v = figures.get(key)
        if hasattr(v, "item"):  # a numpy scalar
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
            return float(v)
    return None


def _runs(figures: dict) -> int:
    runs = figures.get("runs")
    return int(runs) if isinstance(runs, (int, float)) and runs > 0 else 1


def _finished(figures: dict) -> int:
    """The runs that finished (``runs`` less ``failed``): a failed run carries no flag and no outcome."""
    failed = figures.get("failed")
    return _runs(figures) - (int(failed) if isinstance(failed, (int, float)) and failed > 0 else 0)


def _flag(figures: dict, flag: str) -> tuple[int, int] | None:
    """(runs carrying ``flag``, finished runs) or None when the flag was not measured: a group's
    ``<flag>_runs`` out of its finished runs (``comparison._flag_counts`` counts those only), or one run's
    bool (None there: not measured)."""
    count = figures.get(f"{flag}_runs")
    if isinstance(count, (int, float)) and not isinstance(count, bool):
        return int(count), _finished(figures)
    v = figures.get(flag)
    return (int(v), 1) if isinstance(v, bool) else None


def _holds(flag: tuple[int, int] | None) -> bool:
    return flag is not None and flag[1] > 0 and flag[0] >= MAJORITY * flag[1]


def num(v: float | None) -> str:
    """A figure in three significant digits: 4.6e-11, 0.000781, 18.5, 49."""
    if v is None:
        return "–"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.3g}"


# ---------------------------------------------------------------------------
# The evidence, one phrase each.


def _solved(figures: dict) -> tuple[int, int] | None:
    solved = figures.get("solved")
    if isinstance(solved, bool):
        return int(solved), 1
    if isinstance(solved, (int, float)):
        return int(solved), _runs(figures)
    return None


def _all_learned(figures: dict) -> bool | None:
    """Every finished run solved it (one run: it solved it); without a solved count, ``_learned``."""
    solved = _solved(figures)
    if solved is None:
        return _learned(figures)
    finished = 1 if isinstance(figures.get("solved"), bool) else _finished(figures)
    return finished > 0 and solved[0] >= finished


def _learned(figures: dict) -> bool | None:
    """Solved by most runs; None when neither the solved count nor a loss ratio is known."""
    solved, ratio = _solved(figures), _figure(figures, "loss_ratio_iqm") or _figure(figures, "loss_ratio")
    if solved is not None:
        return _holds(solved)
    return None if ratio is None else ratio < AT_BASELINE


def _outcome(figures: dict) -> str:
    """``0/2 solved, loss 1 of baseline``: what the runs achieved."""
    parts = []
    solved = _solved(figures)
    if solved is not None:
        parts.append(f"{solved[0]}/{solved[1]} solved")
    ratio = _figure(figures, "loss_ratio_iqm")
    ratio = _figure(figures, "loss_ratio") if ratio is None else ratio
    if ratio is not None:
        parts.append(f"loss {num(ratio)} of baseline")
    return ", ".join(parts) or "outcome not recorded"


def _reach(figures: dict) -> str:
    """``ratio 4.6e-11, horizon 7.5→1 step``: the gradient at the dependency and how far back it reaches."""
    parts = []
    ratio = _figure(figures, "dependency_ratio")
    if ratio is not None:
        bound = "<" if figures.get("dependency_ratio_bound") else ""
        parts.append(f"ratio {bound}{num(ratio)}")
    end, start = _figure(figures, "horizon"), _figure(figures, "horizon_init")
    if end is not None:
        steps = "step" if end == 1 else "steps"
        parts.append(f"horizon {num(start)}→{num(end)} {steps}" if start is not None else f"horizon {num(end)} {steps}")
    lag = _figure(figures, "dependency_lag")
    if lag is not None:
        parts.append(f"dependency at lag {num(lag)}")
    return ", ".join(parts)


def _memory(figures: dict) -> tuple[bool, str, str] | None:
    """(whether the state holds the dependency input, ``memory 0.05 of ceiling 1, chance 0.02``, the rule
    with its line); None when memory was not measured. Without a ceiling the readout's best, 1 (R² or
    accuracy), stands in; without a chance level, 0."""
    memory = _figure(figures, "memory")
    if memory is None:
        return None
    chance, ceiling = _figure(figures, "memory_chance"), _figure(figures, "memory_ceiling")
    floor, top = (chance if chance is not None else 0.0), (ceiling if ceiling is not None else 1.0)
    line = floor + FORGET_FRACTION * (top - floor)
    short = f"memory {num(memory)} of ceiling {num(top)}, chance {num(floor)}"
    return memory >= line, short, f"{short}: held from {num(line)} (half way from chance to the ceiling)"


def _explosion(figures: dict) -> tuple[bool, str | None]:
    """(whether it explodes, the evidence): most runs flagged ``exploding`` (a non-finite step, a pre-clip norm
    spike, or chaotic forward dynamics: λ₁ above the estimate's error, ``diagnostics.is_chaotic``, decided where
    the number of steps it was averaged over is known; Mikhaeil et al. 2022 prove the gradients then diverge).
    λ₁ is cited as a figure, not judged again here: a group's median carries no length to set its margin.
    A group says how many runs were flagged; one run (``gradlab.watch``) why: its ``chaotic``,
    ``nonfinite_steps`` and ``spikes`` where known."""
    flag = _flag(figures, EXPLODING)
    if not _holds(flag):
        return False, None
    lyapunov = _figure(figures, "lyapunov_max")
    count = figures.get(f"{EXPLODING}_runs")
    if isinstance(count, (int, float)) and not isinstance(count, bool):  # a group of runs
        cited = f", λ₁ {num(lyapunov)}" if lyapunov is not None else ""
        return True, f"{flag[0]}/{flag[1]} runs flagged exploding{cited}"
    why = []
    if figures.get("chaotic") is True:
        why.append(f"λ₁ {num(lyapunov)} > 0 (chaotic)")
    for key, word in (("nonfinite_steps", "non-finite step"), ("spikes", "spike")):
        n = _figure(figures, key)
        if n:
            why.append(f"{num(n)} {word}{'s' if n != 1 else ''}")
    return True, ", ".join(why) or "flagged exploding"


# ---------------------------------------------------------------------------
# The cases.


def _main_case(figures: dict, data_horizon: float | None) -> tuple[str, str, list[str]]:
    """(case, its sentence, details) of everything but the explosion."""
    reach, learned = _reach(figures), _learned(figures)
    memory, outcome = _memory(figures), _outcome(figures)
    horizon = _figure(figures, "horizon")
    details = [f"outcome: {outcome}"]
    if reach:
        details.append(f"gradient: {reach}")
    if memory is not None:
        details.append(f"state: {memory[2]}")
    vanishing = _flag(figures, "vanishing")
    covered = False  # the data needs less than the task's lag, and the gradient reaches all of it
    if data_horizon is not None:
        window = _figure(figures, "window")
        if window is not None and window < data_horizon:  # this group's own task.window hides what it needs
            details.append(f"data: the loss needs inputs up to {num(data_horizon)} steps before the readout")
            return WINDOW_HIDES, (f"{CASES[WINDOW_HIDES]}: it keeps {num(window)} of the {num(data_horizon)} "
                                  f"steps the data needs; {outcome}"), details
        short = _short_data(figures, data_horizon, horizon)
        needed = f"the loss needs inputs up to {num(data_horizon)} steps before the readout"
        details.append(f"data: {needed}" + (f" ({short[1]})" if short else ""))
        if short is not None:
            covered, needs = short
            if learned and _holds(vanishing) and covered:  # the flag fades where the data needs nothing
                return SHORT_DATA, f"{CASES[SHORT_DATA]}: {needs}; {outcome}", details
            if learned and not _holds(vanishing):  # the short reach is a fact about the data, not why anything failed
                return HEALTHY, f"{CASES[HEALTHY]}: {outcome}; {CASES[SHORT_DATA]} ({needs})", details
            # unsolved (or vanishing short of what the data needs): the short reach explains no failure, the checks
            # below say what does
    if _holds(vanishing) and covered:  # the gradient fades beyond what the data needs: not why it fails
        details.append("vanishing: at the task's dependency, beyond the data's reach, which the gradient covers")
    elif _holds(vanishing):
        if _figure(figures, "dependency_ratio") == 0 and not figures.get("dependency_ratio_bound"):
            details.append("ratio exactly 0: nothing reaches the dependency, as when train.tbptt stops the "
                           "backward pass short of it (a cut, not a decay)")
        if vanishing[0] < vanishing[1]:  # a split (a tie, or most): the median's ratio is of both kinds of run
            text = f"{CASES[UNREACHED]} in {vanishing[0]}/{vanishing[1]} runs, reaches it in the rest (median {reach})"
        else:
            text = f"{CASES[UNREACHED]} ({reach})"
        text += f"; {outcome}"
        # only when every finished run both vanished and solved: in a split the solver may be the run that reached
        if vanishing[0] >= vanishing[1] and _all_learned(figures):
            text += "; learned without it"
        return UNREACHED, text, details
    if vanishing is None and figures.get("dependency_ratio_bound") and _figure(figures, "dependency_ratio") is not None:
        # an upper bound at or above vanishing_ratio (gradlab.watch: a loss read between the dependency and the
        # end adds its own direct terms) proves neither that the gradient reaches nor that it vanishes
        details.append("unmeasured: whether the gradient from the end reaches the dependency (the ratio is an upper "
                       "bound: the loss also reads steps in between)")
        return UNTOLD, (f"{CASES[UNTOLD]}: the ratio is only an upper bound ({reach}), the loss also reads steps "
                        "between the dependency and the end; a loss at the last step measures it"), details
    if _figure(figures, "dependency_ratio") is None:  # no profile, or no dependency lag to read it at
        details.append("unmeasured: no dependency lag known, so no vanishing flag")
        return (*_without_lag(learned, outcome, horizon), details)
    if memory is not None and not memory[0]:
        return FORGETS, f"{CASES[FORGETS]} ({reach}; {memory[1]}); {outcome}", details
    if learned:
        return HEALTHY, f"{CASES[HEALTHY]}: {outcome}; {reach}", details
    if learned is None:  # a user's loop (gradlab.watch): whether it learns is the user's to tell
        details.append("unmeasured: the outcome (solved, or loss against a baseline), which tells a hard task "
                       "from a healthy one")
        held = f"; {memory[1]}" if memory is not None else ""
        return UNTOLD, (f"{CASES[UNTOLD]}: gradient reaches ({reach}){held}; whether it learns is not recorded"
                        ), details
    if memory is None:
        details.append("unmeasured: the memory of the dependency input (a run records it at each evaluation; runs "
                       "from before it existed have none), which tells a hard task from a forgetting state")
        return UNTOLD, (f"{CASES[UNTOLD]}: gradient reaches ({reach}), {outcome}; no memory measured "
                        "to tell a hard task from a forgetting state"), details
    return HARD_TASK, (f"{CASES[HARD_TASK]}: gradient reaches ({reach}), the state holds it ({memory[1]}), "
                       f"yet {outcome}"), details


def _short_data(figures: dict, data_horizon: float, horizon: float | None) -> tuple[bool, str] | None:
    """(whether the gradient reaches all the data needs, the sentence) when the data's reach is shorter than the
    task's own lag (``task_lag``, ``Task.lag``); None when it is not or no lag is known (runs from before
    ``task_lag`` was recorded: nothing is claimed beyond what the data needs).

    The two count from different steps. ``data_horizon`` and ``task_lag`` count back from the readout (the
    first scored step, as ``task.window`` hides), the gradient's ``horizon`` and ``dependency_lag`` from the
    last step of the sequence (``diagnostics.profile_summary``). For a task read at its last step (adding,
    temporal order, permutation, digits) the two coincide; for copy and memorisation (read from step T + 10 of
    T + 20) the readout is ``dependency_lag - task_lag`` steps before the last (both name the first symbol),
    so the gradient reaches what the data needs when horizon >= data_horizon + that offset. A task's
    ``dependency`` is never before its earliest input, so the offset is never overstated (0 where it is
    negative: a last-step task whose ``dependency`` is a typical, later input)."""
    lag = _figure(figures, "task_lag")
    if lag is None or data_horizon >= lag:
        return None
    last = _figure(figures, "dependency_lag")
    offset = max(0.0, last - lag) if last is not None else 0.0
    covered = horizon is not None and horizon >= data_horizon + offset
    reaches = "" if horizon is None else f", the gradient reaches {num(horizon)}"
    return covered, f"it needs {num(data_horizon)} steps of {num(lag)}{reaches}"


def _without_lag(learned: bool | None, outcome: str, horizon: float | None) -> tuple[str, str]:
    """(case, sentence) when no dependency lag is known: the gradient cannot be read against it."""
    if learned:
        return HEALTHY, f"{CASES[HEALTHY]}: {outcome}; no dependency lag known to check the gradient against"
    reach = f" (gradient horizon {num(horizon)})" if horizon is not None else ""
    return UNTOLD, (f"{CASES[UNTOLD]}: {outcome}, but no dependency lag is known; a task.window grid "
                    f"gives the data's reach{reach}")


def diagnose(figures: dict, *, data_horizon: float | None = None, exclude: dict | None = None,
             remedies: tuple[Remedy, ...] | None = None) -> Diagnosis:
    """The diagnosis of one group's figures (compare-record keys; a missing key or None: not measured).

    ``data_horizon``: the data's own reach in steps (a ``task.window`` grid's), when known.
    ``exclude``: what the group already uses, as comparison columns (``{"cell": "lstm", "clip":
    "norm(1.0)"}``; a whole compare record will do): never proposed again, nor, for a case measured before
    a remedy acts (MEASURED_BEFORE_REMEDY), another value of a setting in use that addresses it (a group
    that clips is not told to clip otherwise).
    ``remedies``: the table to draw from, default ``DECLARED`` (``declared_remedies()`` on the torch side).
    """
    exclude = exclude or {}
    runs, failed = _runs(figures), figures.get("failed") or 0
    if "runs" in figures and failed >= runs:
        return Diagnosis((UNTOLD,), f"{CASES[UNTOLD]}: no run finished ({failed}/{runs} failed)",
                         (), ())
    case, text, details = _main_case(figures, data_horizon)
    explodes, evidence = _explosion(figures)
    cases = (case,) if not explodes else (EXPLODING,) if case == HEALTHY else (case, EXPLODING)
    if explodes:
        text = (f"{CASES[EXPLODING]}: {evidence}; {text.partition(': ')[2]}" if case == HEALTHY
                else f"{text}; also explodes ({evidence})")
        clip = exclude.get("clip")
        capped = f"; {clip} caps the update" if clip not in (None, "none") else ""
        details.append(f"explosion: {evidence} (a spike is of the norm before any clip{capped})")
    if runs == 1 and "runs" in figures:
        text += " (1 seed)"
        details.append("unmeasured: the spread over seeds (one run)")
    treat = list(cases)
    if _all_learned(figures):  # every run learns: only an explosion is a hazard left to treat
        treat = [c for c in cases if c == EXPLODING]
    chosen = _remedies(treat, exclude, DECLARED if remedies is None else remedies)
    return Diagnosis(cases, text, tuple(details), chosen)


def _same(current, value: str, column: str) -> bool:
    """Whether a group's ``column`` value is the setting ``value`` (a clip label ``norm(1.0)`` is ``norm``)."""
    if current is None:
        return False
    text = str(current).lower()
    if column == "clip":
        text = text.partition("(")[0]
    try:  # a number as a column with gaps holds it: omega 2.0 is the setting 2
        return float(text) == float(value)
    except ValueError:
        return text == value.lower()


def _remedies(cases: list[str], exclude: dict, table: tuple[Remedy, ...]) -> tuple[str, ...]:
    """The settings of ``table`` that address one of ``cases``, in case order then table order, less what
    the group uses, what its cell does not take, and for a MEASURED_BEFORE_REMEDY case alternatives to a
    setting in use that addresses it."""
    cell = exclude.get("cell")
    in_use = [r for r in table if _same(exclude.get(r.column), r.value, r.column)]
    out = []
    for case in cases:
        treated = {r.key for r in in_use if case in r.addresses and case in MEASURED_BEFORE_REMEDY}
        for r in table:
            if case not in r.addresses or r.key in treated or r in in_use or r.setting in out:
                continue
            if r.cells is not None and cell is not None and cell not in r.cells:
                continue
            out.append(r.setting)
    return tuple(out)


def remedy_text(settings, limit: int | None = None) -> str:
    """Settings sharing a key as one: ``model.cell: irnn, lstm; train.omega: 2``; past ``limit`` settings,
    ``+N more``."""
    shown = list(settings)[:limit] if limit else list(settings)
    keys: dict[str, list[str]] = {}
    for s in shown:
        key, _, value = s.partition(":")
        keys.setdefault(key, []).append(value.strip())
    text = "; ".join(f"{k}: {', '.join(v)}" for k, v in keys.items())
    rest = len(settings) - len(shown)
    return text + (f"; +{rest} more" if rest else "")
