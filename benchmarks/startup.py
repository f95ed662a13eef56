"""Start-up benchmark: time from ``gradlab run`` to the first training step, and a short sweep's --jobs 2/1.

    python benchmarks/startup.py [--repeat N]

First step: a sweep of two one-step runs (so ``--jobs 2`` takes the parallel path);
the clock stops when the first run's ``summary.json`` appears on disk (polled every
5 ms). A one-step run is its first step, one evaluation of 16 sequences and the
writing of its files, so this is the time to the first step plus a few
milliseconds. The reference, timed in the same process, is what any process that
trains with torch pays once: a fresh interpreter importing torch and building a
``torch.optim.Adam`` (which imports ``torch._dynamo``); ``vs_reference`` divides by it.

Short sweep: 8 runs of 1-3 s each on the 2-core development machine (written
below) with ``--jobs 1`` and ``--jobs 2``, back to back, fresh result
directories; ``jobs2_vs_jobs1`` is the ratio of their wall times. On a short sweep the start-up is a large part of the
wall time, which the minute-long quickstart (``benchmarks/sweeps.py``) hides.
``run_s`` is each run's own training time as its ``summary.json`` records it
(``wall_seconds``), so the workload can be checked against that (the
machine's speed varies).

Training only: the same 8 runs trained by ``gradlab.training.train`` in one
process, then split 4 and 4 over two processes, each process warm (torch,
``torch._dynamo`` and a 5-step run done) before a common start signal; the clock
stops when the slower process has finished. No start-up, no files, no driver:
``jobs2_vs_jobs1`` here is the best ratio two processes reach on this machine
for these runs, the floor under the sweep's.

Each measurement is repeated ``--repeat`` times (default 3) and every figure is
printed, with the medians: on a shared machine the spread is part of the result.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST_STEP = """\
name: first
task: {name: adding, length: 10, eval_size: 16}
model: {hidden: 8}
train: {steps: 1, batch_size: 4, eval_every: 1}
seeds: [0, 1]
"""

SHORT = """\
name: short
task: {name: adding, length: 20, eval_size: 100}
model: {hidden: 32}
train: {steps: 400, batch_size: 32, eval_every: 100}
seeds: [0, 1, 2, 3]
grid:
  model.cell: [vanilla, lstm]
"""

REFERENCE = "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"

# A training-only process: warm up, say so (a file), wait for the start file, train runs k, k+n, ...
# of the config, print the seconds that took. argv: config, k, n, start file.
TRAIN_SHARE = """
import os, sys, time
from gradlab.config import load
from gradlab.training import train
config, k, n, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = load(config)[1]
warm = runs[0].config
train(warm | {"train": warm["train"] | {"steps": 5, "eval_every": 5}})
open(f"{start}.ready{k}", "w").close()
while not os.path.exists(start):
    time.sleep(0.001)
began = time.perf_counter()
for run in runs[k::n]:
    train(run.config)
print(time.perf_counter() - began)
"""


def command(config: Path, out: Path, jobs: int) -> list[str]:
    return [sys.executable, "-m", "gradlab", "run", str(config), "--out", str(out), "-q", "-f", "json",
            "--jobs", str(jobs)]


def first_step(config: Path, out: Path, jobs: int) -> float:
    """Seconds from starting ``gradlab run`` to the first ``summary.json`` under ``out``."""
    start = time.perf_counter()
    proc = subprocess.Popen(command(config, out, jobs), stdout=subprocess.DEVNULL)
    seen = None
    while seen is None:
        if next(out.rglob("summary.json"), None) is not None:
            seen = time.perf_counter() - start
        elif proc.poll() is not None:
            raise SystemExit(f"gradlab run exited with {proc.returncode} before a run was stored")
        else:
            time.sleep(0.005)
    if proc.wait() != 0:
        raise SystemExit(f"gradlab run exited with {proc.returncode}")
    return seen


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def training_only(config: Path, tmp: Path, processes: int, trial: int) -> float:
    """Seconds for ``processes`` warm processes to train the config's runs between them (the slowest)."""
    start = tmp / f"start{processes}_{trial}"
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN_SHARE, str(config), str(k), str(processes), str(start)],
                              stdout=subprocess.PIPE, text=True) for k in range(processes)]
    while not all(Path(f"{start}.ready{k}").exists() for k in range(processes)):
        if any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit("a training-only process failed")
        time.sleep(0.01)
    start.touch()
    seconds = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a training-only process exited with {p.returncode}")
        seconds.append(float(out))
    return max(seconds)


def run_seconds(out: Path) -> list[float]:
    """Each stored run's own training time (its summary's ``wall_seconds``)."""
    return [json.loads(p.read_text())["wall_seconds"] for p in out.rglob("summary.json")]


def record(into: dict, one: float, two: float) -> None:
    """One repeat's ``--jobs 1`` and ``--jobs 2`` seconds, and their ratio, appended to ``into``."""
    for key, value in (("jobs1_s", one), ("jobs2_s", two), ("jobs2_vs_jobs1", two / one)):
        into[key].append(value)


def figures(values: list[float]) -> dict:
    return {"runs": [round(v, 3) for v in values], "median": round(statistics.median(values), 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each figure (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "first.yaml").write_text(FIRST_STEP)
        (tmp / "short.yaml").write_text(SHORT)
        reference, first, ratio = [], {1: [], 2: []}, {"jobs1_s": [], "jobs2_s": [], "jobs2_vs_jobs1": []}
        floor = {"jobs1_s": [], "jobs2_s": [], "jobs2_vs_jobs1": []}
        runs = []
        for i in range(args.repeat):
            reference.append(wall([sys.executable, "-c", REFERENCE]))
            for jobs in (1, 2):
                first[jobs].append(first_step(tmp / "first.yaml", tmp / f"first{jobs}_{i}", jobs))
            one = wall(command(tmp / "short.yaml", tmp / f"short1_{i}", 1))
            two = wall(command(tmp / "short.yaml", tmp / f"short2_{i}", 2))
            record(ratio, one, two)
            runs += run_seconds(tmp / f"short1_{i}")
            record(floor, *(training_only(tmp / "short.yaml", tmp, n, i) for n in (1, 2)))
    ref = statistics.median(reference)
    report = {
        "reference_import_torch_and_adam_s": figures(reference),
        "first_step": {f"jobs{j}_s": figures(first[j]) for j in (1, 2)}
        | {f"jobs{j}_vs_reference": round(statistics.median(first[j]) / ref, 2) for j in (1, 2)},
        "short_sweep": {"runs": 8, **{key: figures(values) for key, values in ratio.items()},
                        "run_s": {"min": round(min(runs), 2), "median": round(statistics.median(runs), 2),
                                  "max": round(max(runs), 2)}},
        "training_only": {key: figures(values) for key, values in floor.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
