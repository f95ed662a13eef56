"""The task registry: every long-dependency task and variant by the name a config gives it.

A task turns ``(batch, length, generator)`` into a ``Batch`` of time-major
tensors and knows how to score a model's outputs on it. Each task also states
its *memoryless baseline* (the loss of the best model that ignores the long
dependency, derived from its formula) and its *lag* (how far back a gradient
must reach), which the diagnostics compare against.

Add a task by writing a small subclass of ``Task`` (``generate``, ``baseline``,
``lag``, ``dependency``, ``solved``) beside its family (``gradlab.adding``: marked values
read at the end; ``gradlab.symbols``: symbol sequences) and an entry in ``TASKS``. A task may have
*variants* that follow other sources (``adding``: ``hochreiter``, ``pascanu``,
``tcn``), listed in ``VARIANTS``; ``resolve`` turns a config's ``task`` section
(``name`` and ``variant``) into the ``Task`` it names. A task on a real data set
lives in its own module (``gradlab.digits``), whose entries this module adds to
``TASKS`` and ``VARIANTS``; both build on ``gradlab.task`` (``Task``, ``Batch``).
"""

from __future__ import annotations

from gradlab.adding import NEAR_SPAN, Adding, AddingHochreiter, AddingNear, AddingPascanu, AddingTCN, Multiplication
from gradlab.digits import DIGITS, DIGITS_VARIANTS
from gradlab.symbols import Copy, Memorization, Permutation, TemporalOrder
from gradlab.task import Batch, Task, Windowed  # noqa: F401  (the registry's entries' types, also read from here)
from gradlab.yamlfile import did_you_mean

TASKS: dict[str, Task] = {
    "adding": Adding(
        name="adding", kind="regression", input_size=2, output_size=1, min_length=2,
        description="sum of two marked values, one in each half, read at the end "
                    "(Arjovsky 2016 variant of Hochreiter 1997)"),
    "copy": Copy(
        name="copy", kind="classification", input_size=10, output_size=10, min_length=1,
        description="recall 10 symbols after a delay of T steps; length T+20 (Arjovsky 2016)"),
    "temporal_order": TemporalOrder(
        name="temporal_order", kind="classification", input_size=6, output_size=4, min_length=10,
        description="order of two A/B symbols among distractors, 4 classes "
                    "(Pascanu 2013 code; Hochreiter 1997 Exp. 6a)"),
    "temporal_order_3bit": TemporalOrder(
        name="temporal_order_3bit", kind="classification", input_size=6, output_size=8, min_length=10,
        starts=(1, 3, 6),
        description="order of three A/B symbols among distractors, 8 classes "
                    "(Pascanu 2013 code; Hochreiter 1997 Exp. 6b)"),
    "multiplication": Multiplication(
        name="multiplication", kind="regression", input_size=2, output_size=1, min_length=2,
        description="product of two marked values, one in each half, read at the end "
                    "(Pascanu 2013; Hochreiter 1997 Exp. 5)"),
    "permutation": Permutation(
        name="permutation", kind="classification", input_size=100, output_size=100, min_length=2,
        description="recall the first of L symbols (0 or 1; the rest from 2..99) at the end "
                    "(Pascanu 2013 random permutation)"),
    "memorization": Memorization(
        name="memorization", kind="classification", input_size=7, output_size=6, min_length=1,
        description="recall 10 symbols from 5 after a delay of T steps and a go marker; length T+20 "
                    "(Pascanu 2013 noiseless memorisation)"),
}

VARIANTS: dict[str, dict[str, Task]] = {
    "adding": {
        "hochreiter": AddingHochreiter(
            name="adding", variant="hochreiter", kind="regression", input_size=2, output_size=1, min_length=11,
            description="values U[-1,1], X1 in the first ten steps, target 0.5+(X1+X2)/4, length "
                        "T..1.1T, |error| < 0.04 (Hochreiter 1997 Exp. 4)"),
        "pascanu": AddingPascanu(
            name="adding", variant="pascanu", kind="regression", input_size=2, output_size=1, min_length=10,
            description="mean of two marked values in the first half, length T..1.1T, right if "
                        "squared error <= 0.04 (Pascanu 2013 code)"),
        "tcn": AddingTCN(
            name="adding", variant="tcn", kind="regression", input_size=2, output_size=1, min_length=2,
            description="sum of two marked values placed anywhere (Bai 2018 TCN benchmark)"),
        "near": AddingNear(
            name="adding", variant="near", kind="regression", input_size=2, output_size=1, min_length=NEAR_SPAN,
            description=f"both marked values in the last {NEAR_SPAN} steps, lag {NEAR_SPAN - 1} at any length "
                        "(the short-dependency control of a task.window grid)"),
    },
}
"""Variants of a task that follow other sources, chosen with ``task.variant``; absent = the task itself."""


# The data-set task lives in its own module (it builds on gradlab.task, as the tasks above do).
TASKS["digits"] = DIGITS
VARIANTS["digits"] = DIGITS_VARIANTS


def resolve(task_cfg: dict) -> Task | Windowed:
    """The task a config's ``task`` section names: ``TASKS[name]``, or ``VARIANTS[name][variant]``;
    with a ``window`` k, that task with every input more than k steps before the readout hidden
    (``gradlab.task.Windowed``), in its training batches and evaluation set alike.

    A missing ``variant`` or ``window`` key (configs written before they existed) means None.
    """
    task = _named(task_cfg)
    window = task_cfg.get("window")
    return task if window is None else Windowed(task, window)


def _named(task_cfg: dict) -> Task:
    """``TASKS[name]`` or ``VARIANTS[name][variant]``; ValueError naming the valid ones."""
    name, variant = task_cfg["name"], task_cfg.get("variant")
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}{did_you_mean(name, TASKS)}; valid: {', '.join(TASKS)}")
    if variant is None:
        return TASKS[name]
    choices = VARIANTS.get(name, {})
    if variant not in choices:
        if not choices:
            raise ValueError(f"task {name} has no variants, got {variant!r}; leave task.variant null")
        raise ValueError(f"unknown variant {variant!r} for {name}{did_you_mean(variant, choices)}; "
                         f"valid: {', '.join(choices)}")
    return choices[variant]


def catalogue() -> dict[str, Task]:
    """Every task and variant by its label (``adding``, ``adding[hochreiter]``, ...), for `gradlab ls`."""
    entries = {}
    for name, task in TASKS.items():
        entries[name] = task
        entries.update({v.label: v for v in VARIANTS.get(name, {}).values()})
    return entries
