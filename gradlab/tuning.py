"""Each arm at its own best hyperparameters, chosen on seeds the comparison never reports (``tune:``).

A config's ``tune:`` section names dotted keys with lists of values, the selection seeds and a metric::

    tune:
      train.lr: [1.0e-3, 3.0e-3, 1.0e-2]
      seeds: [100, 101]       # must not overlap the config's seeds
      metric: final_loss

The protocol of Le et al. 2015 and Arjovsky et al. 2016 (a grid search per model before comparing;
Henderson et al. 2018, "Deep RL that matters", on untuned baselines): the arms are the grid's points
without the tuned keys. For each arm every combination of the tuned values trains on the selection
seeds (the selection runs, stored apart in ``<out>/<name>/SELECTION_DIR``), the best by the metric's
seed mean is chosen, and only the arm's runs at its chosen values on the config's seeds are reported:
they alone form the comparison and meet the ``expect:`` list.

Selection rules (``score``, ``choose``):

- ``final_loss``: the final eval loss over the task's memoryless baseline, minimised; a diverged run
  (marked ``diverged``, whatever loss it ended at, or a non-finite loss) counts as infinitely bad.
- ``solved_rate``: the share of seeds solved, maximised; a diverged run is unsolved.
- ``steps_to_solve``: the steps to solve, minimised; an unsolved or diverged run counts as
  twice the step budget (PAR-2, the penalised average runtime of the SAT competitions), so a
  combination that solves some seeds beats one that solves none.
- Ties (equal seed means) are broken by the final loss (for ``solved_rate`` and ``steps_to_solve``),
  then by the order of the values in the config (the first key's values vary slowest); the record
  says which decided (``tie_break``) and over which (``beaten_on_loss``, ``tied_on_loss``).
- A selection run that failed (an exception, a worker killed: ``status: failed``) measured nothing:
  its arm gets no choice (``failed`` names the runs), so none of its reported runs is trained on a
  choice made from a crash, and ``gradlab run`` exits 1. The same command again trains the failed
  runs again (as any failed run) and then the arm's reported runs.

A selection run's config differs from the reported runs' only in its seed, so its id (and hash) does
not depend on the other tuned values: widening a range re-uses the selection runs already done.
The choice per arm is recorded in ``<out>/<name>/SELECTION_FILE``; the reading side (compare, report,
plot) takes it from there and never shows the selection runs nor a run at values no longer chosen.
Imports no torch (the reading side imports this module).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from gradlab import results
from gradlab.vocabulary import COLUMN_KEYS, SELECTION_DIR, SELECTION_FILE, SELECTION_MARKER, TUNE_METRICS

PAR = 2  # steps_to_solve: an unsolved run counts as PAR x the step budget (PAR-2)
METRIC_TEXT = {"final_loss": "final loss ÷ baseline", "solved_rate": "share of seeds solved",
               "steps_to_solve": f"steps to solve (unsolved: {PAR}x the budget)"}


# ---------------------------------------------------------------------------
# Validation (config.validate calls ``check``).

# ---------------------------------------------------------------------------
# Planning.

@dataclass
class Arm:
    """One grid point without the tuned keys: its candidates at the config's seeds, its selection runs."""

    key: dict          # the grid values that make the arm: dotted path -> value
    label: str         # "length=50, cell=irnn" ("all runs" without a grid)
    candidates: list = field(default_factory=list)  # per combination: [Run at each of the config's seeds]
    selection: list = field(default_factory=list)   # per combination: [Run at each selection seed]


@dataclass
class Plan:
    tuned: dict                # dotted path -> its values, in the config's order
    combinations: list         # [{path: value}], the first key varying slowest
    seeds: list
    selection_seeds: list
    metric: str
    arms: list

    @property
    def selection_runs(self) -> list:
        return [r for arm in self.arms for runs in arm.selection for r in runs]

    @property
    def cost(self) -> tuple[int, int]:
        """(selection runs, reported runs): arms x combinations x selection seeds, arms x seeds."""
        return (len(self.arms) * len(self.combinations) * len(self.selection_seeds),
                len(self.arms) * len(self.seeds))

    def describe(self) -> str:
        """The plan and its cost in runs, one line."""
        a, c, s, n = len(self.arms), len(self.combinations), len(self.selection_seeds), len(self.seeds)
        sel, rep = self.cost
        return (f"tune {', '.join(self.tuned)} by {self.metric}: {a} arms x {c} combinations x {s} selection "
                f"seeds = {sel} selection runs, then {a} arms x {n} seeds = {rep} reported runs; {sel + rep} runs")


def _combination(run, tuned: dict) -> dict:
    return {path: run.overrides[path] for path in tuned}


def plan(experiment) -> Plan:
    """The arms of a tuned experiment, from its runs (every arm x combination at the config's seeds)."""
    from gradlab.config import Run, run_id

    tune = experiment.tune
    tuned = {k: v for k, v in tune.items() if k not in ("seeds", "metric")}
    keys = list(tuned)
    import itertools

    combinations = [dict(zip(keys, combo)) for combo in itertools.product(*tuned.values())]
    seeds = list(dict.fromkeys(r.config["seed"] for r in experiment.runs))
    arms: dict[str, Arm] = {}
    for run in experiment.runs:
        key = {p: v for p, v in run.overrides.items() if p not in tuned}
        ident = json.dumps(key, sort_keys=True, default=str)
        if ident not in arms:
            label = ", ".join(f"{p.split('.')[-1]}={_label(v)}" for p, v in key.items()) or "all runs"
            arms[ident] = Arm(key, label, [[] for _ in combinations], [[] for _ in combinations])
        arm = arms[ident]
        c = combinations.index(_combination(run, tuned))
        arm.candidates[c].append(run)
        if run.config["seed"] == seeds[0]:
            for seed in tune["seeds"]:
                cfg = {**copy.deepcopy(run.config), "seed": seed}
                arm.selection[c].append(Run(run_id(cfg, run.overrides), cfg, run.overrides))
    return Plan(tuned, combinations, seeds, list(tune["seeds"]), tune.get("metric", "final_loss"), list(arms.values()))


def _label(v) -> str:
    if isinstance(v, dict):  # a section variant or a clip spec
        return "{" + ", ".join(f"{k}: {x}" for k, x in v.items()) + "}"
    return str(v)


# ---------------------------------------------------------------------------
# Selection.

def score(summary: dict | None, metric: str, steps: int) -> float:
    """One selection run's value of ``metric`` (see the module docstring); None summary: a failed run.

    A run marked diverged is the worst whatever its final loss: with ``on_nonfinite: skip`` it can end
    at a finite loss after non-finite steps, and that loss is not the combination's to be scored by."""
    ok = summary is not None and summary.get("status") == "ok"
    if metric == "final_loss":
        loss, base = (summary or {}).get("final_loss"), (summary or {}).get("baseline_loss")
        if not ok or summary.get("diverged") or not isinstance(loss, (int, float)) or not math.isfinite(loss) \
                or not base:
            return math.inf
        return loss / base
    solved = ok and bool(summary.get("solved")) and not summary.get("diverged")
    if metric == "solved_rate":
        return 1.0 if solved else 0.0
    return float(summary["steps_to_solve"]) if solved and summary.get("steps_to_solve") is not None \
        else float(PAR * steps)


def _mean(values: list[float]) -> float:
    return math.inf if any(math.isinf(v) for v in values) else sum(values) / len(values)


def choose(plan: Plan, summaries: dict) -> list[dict]:
    """Each arm's selection curve and choice, from the selection runs' summaries (run id -> summary, or
    None for a run not finished yet). An arm with an unfinished selection run has no choice yet, nor one
    with a failed selection run (``failed``: [{run, values, error}]): a crash measured nothing."""
    sign = 1 if TUNE_METRICS[plan.metric] == "min" else -1
    out = []
    for arm in plan.arms:
        curve, complete, failed = [], True, []
        for combination, runs in zip(plan.combinations, arm.selection):
            points = []
            for run in runs:
                if run.id not in summaries or summaries[run.id] is None:
                    complete = False
                    continue
                s = summaries[run.id]
                if s.get("status") != "ok":
                    failed.append({"run": run.id, "values": combination, "error": s.get("error")})
                points.append({"seed": run.config["seed"], "run": run.id, "status": s.get("status"),
                               "diverged": bool(s.get("diverged")),
                               "value": score(s, plan.metric, run.config["train"]["steps"]),
                               "loss_ratio": score(s, "final_loss", run.config["train"]["steps"])})
            full = len(points) == len(runs)
            curve.append({"values": combination, "runs": points,
                          "mean": _mean([p["value"] for p in points]) if full else None,
                          "loss_ratio_mean": _mean([p["loss_ratio"] for p in points]) if full else None})
        record = {"arm": arm.key, "label": arm.label, "complete": complete, "curve": curve,
                  "chosen": None, "edge": [], "tied": False, "reported": [], "failed": failed,
                  "candidates": [r.id for runs in arm.candidates for r in runs]}
        if complete and not failed:
            ranked = sorted(range(len(curve)), key=lambda c: (sign * curve[c]["mean"],
                                                              curve[c]["loss_ratio_mean"], c))
            best = ranked[0]
            record["chosen"] = curve[best]["values"]
            record.update(_ties(curve, best))
            record["no_finite"] = all(math.isinf(p["mean"]) for p in curve)
            record["edge"] = at_edge(plan.tuned, record["chosen"])
            record["reported"] = [r.id for r in arm.candidates[best]]
        out.append(record)
    return out


def _ties(curve: list[dict], best: int) -> dict:
    """How ``best`` was taken among the combinations of its seed mean, each list in the config's order:
    ``beaten_on_loss`` (a higher final loss), ``tied_on_loss`` (an equal one too: listed after ``best``).
    ``tie_break``: "final_loss" (every tied one beaten on loss), "order" (none), "final_loss, then order"."""
    tied = [c for c in range(len(curve)) if c != best and curve[c]["mean"] == curve[best]["mean"]]
    beaten = [c for c in tied if curve[c]["loss_ratio_mean"] > curve[best]["loss_ratio_mean"]]
    equal = [c for c in tied if c not in beaten]
    tie_break = None if not tied else "order" if not beaten else "final_loss" if not equal \
        else "final_loss, then order"
    return {"tied": bool(tied), "tied_with": [curve[c]["values"] for c in tied],
            "beaten_on_loss": [curve[c]["values"] for c in beaten],
            "tied_on_loss": [curve[c]["values"] for c in equal], "tie_break": tie_break}


def finished(plan: Plan, out: Path, name: str) -> dict:
    """The summaries of the selection runs finished on disk (ok or failed, every promised file there),
    by run id: what ``choose`` selects from."""
    from gradlab.sweeps import run_dir

    found = {}
    for run in plan.selection_runs:
        path = run_dir(out, f"{name}/{SELECTION_DIR}", run)
        if results.is_finished(path) and not results.missing_files(path):
            found[run.id] = results.read_json(path / results.SUMMARY)
    return found


def at_edge(tuned: dict, chosen: dict) -> list[str]:
    """The tuned keys of numbers whose chosen value is the smallest or largest searched."""
    edge = []
    for path, values in tuned.items():
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(values) and len(set(numbers)) > 1 and chosen[path] in (min(numbers), max(numbers)):
            edge.append(path)
    return edge


def edge_note(path: str) -> str:
    return f"best {path.split('.')[-1]} at the edge: widen the range"


def document(out: Path, name: str, plan: Plan, arms: list[dict], timing: dict | None = None) -> tuple[dict, dict]:
    """(the selection record ``record`` would write, the one on disk or {}), as stored: infinities as null."""
    old = results.read_selection(Path(out) / name) or {}
    sweeps = old.get("sweeps", []) + ([timing] if timing else [])
    doc = {"name": name, "metric": plan.metric, "better": TUNE_METRICS[plan.metric],
           "tuned": plan.tuned, "seeds": plan.seeds, "selection_seeds": plan.selection_seeds,
           "cost": dict(zip(("selection", "reported"), plan.cost)), "arms": arms, "sweeps": sweeps}
    return json.loads(json.dumps(results.finite(doc))), old  # read back by _number


def record(out: Path, name: str, plan: Plan, arms: list[dict], timing: dict | None = None) -> dict:
    """Write ``<out>/<name>/SELECTION_FILE`` (atomically), keeping the timings of earlier selection sweeps."""
    doc, old = document(out, name, plan, arms, timing)
    if doc != old:  # unchanged (a resume of a finished study): a read-only archive stays unwritten
        results.write_json(Path(out) / name / SELECTION_FILE, doc)
    return doc


def _number(v) -> float:
    return math.inf if v is None else float(v)


def prepare(out: Path, name: str, plan: Plan) -> None:
    """Write the selection folder's marker before its first run, so no reader ever pools a selection run."""
    marker = Path(out) / name / SELECTION_DIR / SELECTION_MARKER
    doc = {"tuned": plan.tuned, "selection_seeds": plan.selection_seeds, "metric": plan.metric}
    if not marker.is_file() or results.read_json(marker) != json.loads(json.dumps(doc)):
        results.write_json(marker, doc)


def reported_runs(plan: Plan, arms: list[dict], shard: tuple[int, int] | None = None) -> tuple[list, list]:
    """(the runs to report at each arm's chosen values, the arms still waiting for their selection).

    With ``shard=(i, n)`` every n-th (arm, seed) slot from the i-th, counted over all arms, so the
    shards of one sweep split the reported runs whichever arms are ready.
    """
    runs, waiting, slot = [], [], 0
    for arm, rec in zip(plan.arms, arms):
        for k in range(len(plan.seeds)):
            if rec["chosen"] is not None and (shard is None or slot % shard[1] == shard[0] - 1):
                runs.append(arm.candidates[plan.combinations.index(rec["chosen"])][k])
            slot += 1
        if rec["chosen"] is None:
            waiting.append(rec)
    return runs, waiting


# ---------------------------------------------------------------------------
# The reading side: which run directories a reader shows.

def selections(root: Path) -> list[tuple[Path, dict]]:
    """(experiment folder, its selection record) of every tuned experiment under ``root``."""
    found = []
    for path in results.files_named(root, SELECTION_FILE):  # symlinked experiments too
        doc = results.read_selection(path.parent)
        if doc is not None and path.parent.name != SELECTION_DIR:
            found.append((path.parent, doc))
    return found


def fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else "inf"
    return _label(v)


def choice_rows(doc: dict) -> list[dict]:
    """One row per arm of a selection record: the arm, the chosen values, the curve, the notes."""
    rows = []
    for arm in doc.get("arms", []):
        notes = [edge_note(p) for p in arm.get("edge", [])]
        if arm.get("failed"):
            notes.append(failed_note(arm))
        elif arm.get("no_finite"):
            notes.append("every combination diverged: the first listed was taken")
        elif arm.get("tied"):
            notes.append(tie_note(arm, doc.get("metric")))
        if not arm.get("complete"):
            notes.append("selection not finished")
        chosen = arm.get("chosen") or {}
        curve = " · ".join(", ".join(fmt_value(v) for v in point["values"].values()) + ": "
                           + (fmt_value(_number(point["mean"])) if arm.get("complete") else "–")
                           for point in arm.get("curve", []))
        rows.append({"arm": arm.get("label"), "chosen": ", ".join(f"{p.split('.')[-1]}={fmt_value(v)}"
                                                                  for p, v in chosen.items()) or "–",
                     "curve": curve, "notes": "; ".join(notes)})
    return rows


def values_text(values: dict) -> str:
    """{"train.lr": 0.01} as lr=0.01."""
    return ", ".join(f"{p.split('.')[-1]}={fmt_value(v)}" for p, v in values.items())


def failed_note(arm: dict) -> str:
    """Why an arm has no choice: its failed selection runs, by their values."""
    at = list(dict.fromkeys(values_text(f["values"]) for f in arm["failed"]))
    n = len(arm["failed"])
    return (f"no choice: {n} selection run{'' if n == 1 else 's'} failed (at {'; '.join(at)}); "
            "the same command again retrains {}".format("it" if n == 1 else "them"))


def tie_note(arm: dict, metric: str | None) -> str:
    """What was taken among combinations of equal seed mean, and why (``choose``'s ``tie_break``)."""
    def listed(key):
        return "; ".join(values_text(v) for v in arm.get(key, []))

    others = listed("tied_with") or "another combination"
    if arm.get("tie_break") == "final_loss":
        return f"tied with {others}: the lowest final loss was taken"
    if arm.get("tie_break") == "final_loss, then order":
        return (f"tied with {others}: the lowest final loss was taken, then the first listed among equal "
                f"losses (tied on final loss too: {listed('tied_on_loss')})")
    if arm.get("tie_break") == "order" and metric != "final_loss":
        return f"tied with {others}, and on final loss too: the first listed was taken"
    if arm.get("tie_break") == "order":
        return f"tied with {others}: the first listed was taken"
    return f"tied with {others}"  # a record written before tie_break was kept


def tuned_columns(docs: list[dict]) -> list[str]:
    """The comparison's columns of the tuned keys (train.lr -> lr), so each arm's row carries its chosen values."""
    names = {key: column for column, key in COLUMN_KEYS.items()}
    return list(dict.fromkeys(names.get(path, path.split(".")[-1]) for doc in docs for path in doc.get("tuned", {})))


def caption(doc: dict) -> str:
    """What a selection table shows: the metric, its direction, the selection seeds."""
    metric = doc.get("metric")
    better = "lower" if doc.get("better") == "min" else "higher"
    return (f"selection curve: {', '.join(doc.get('tuned', {}))}: {METRIC_TEXT.get(metric, metric)} "
            f"({metric}; {better} is better), mean over the selection seeds "
            f"{', '.join(map(str, doc.get('selection_seeds', [])))}, which the comparison never reports")


def markdown(doc: dict) -> str:
    """A selection record as a Markdown table with its caption."""
    lines = ["| arm | chosen | selection curve | notes |", "|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['chosen']} | {r['curve']} | {r['notes']} |" for r in choice_rows(doc)]
    cost = doc.get("cost", {})
    return "\n".join(lines) + (f"\n\n*{caption(doc)}; {cost.get('selection', '?')} selection runs in "
                               f"`{SELECTION_DIR}/`*\n")


# ---------------------------------------------------------------------------
# The selection curve (``gradlab plot`` draws it next to the other figures of a tuned experiment).

def curve_points(doc: dict, arm: dict, path: str) -> list[tuple]:
    """(value, seed mean, [per-seed values], chosen?) along ``path``, the other tuned keys at the arm's
    chosen values (a slice through the choice); only where the selection is finished."""
    chosen = arm.get("chosen") or {}
    points = []
    for point in arm.get("curve", []):
        values = point["values"]
        if not arm.get("complete") or any(values[k] != chosen.get(k) for k in values if k != path):
            continue
        points.append((values[path], _number(point["mean"]), [_number(r["value"]) for r in point["runs"]],
                       values == chosen))
    return points


def curve_figure(doc: dict):
    """One panel per tuned key: each arm's seed mean of the metric against the key's values (dots: the
    seeds; a ring: the choice). A failed or diverged selection (an infinite value) is not drawn, and
    the panel says how many. Returns a matplotlib Figure, or None when no arm has finished its selection."""
    import matplotlib
    from matplotlib.figure import Figure

    arms = [a for a in doc.get("arms", []) if a.get("chosen")]
    if not arms:
        return None
    paths = list(doc.get("tuned", {}))
    fig = Figure(figsize=(5.5 * len(paths), 4.2), layout="constrained")
    colors = matplotlib.colormaps["tab10"].colors
    metric = doc.get("metric")
    for k, path in enumerate(paths):
        ax = fig.add_subplot(1, len(paths), k + 1)
        values = doc["tuned"][path]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        position = (lambda v: v) if numeric else (lambda v, order=[json.dumps(x) for x in values]:
                                                  order.index(json.dumps(v)))
        hidden, positive = 0, True
        for i, arm in enumerate(arms):
            color = colors[i % len(colors)]
            points = curve_points(doc, arm, path)
            line = [(position(v), m) for v, m, _, _ in points if math.isfinite(m)]
            hidden += sum(not math.isfinite(x) for _, _, seeds, _ in points for x in seeds)
            positive &= all(m > 0 for _, m in line)
            if line:
                ax.plot(*zip(*line), "-o", color=color, label=arm["label"], markersize=4)
            for v, m, seeds, chosen in points:
                finite = [x for x in seeds if math.isfinite(x)]
                ax.plot([position(v)] * len(finite), finite, ".", color=color, alpha=0.4)
                if chosen and math.isfinite(m):
                    ax.plot([position(v)], [m], "o", markersize=11, markerfacecolor="none", color=color)
        if numeric and all(v > 0 for v in values) and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [_label(v) for v in values])
        if metric == "final_loss" and positive:
            ax.set_yscale("log")
        if metric == "final_loss":
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8, label="baseline")
        ax.set_xlabel(path)
        ax.set_ylabel(f"{METRIC_TEXT.get(metric, metric)}, selection seeds")
        if hidden:
            ax.set_title(f"{hidden} failed or diverged selection runs not drawn", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{doc.get('name')}: selection curve (ring: the choice per arm)", fontsize=10)
    return fig
