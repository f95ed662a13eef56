"""Start-up benchmark: time from ``gradlab run`` to the first training step, and a short sweep's --jobs 2/1.

    python benchmarks/startup.py [--repeat N]

First step: a sweep of two one-step runs (so ``--jobs 2`` takes the parallel path);
the clock stops when the first run's ``summary.json`` appears on disk (polled every
5 ms). A one-step run is its first step, one evaluation of 16 sequences and the
writing of its files, so this is the time to the first step plus a few
milliseconds. The reference, timed in the same process, is what any process that
trains with torch pays once: a fresh interpreter importing torch and building a
``torch.optim.Adam`` (which imports ``torch._dynamo``); ``vs_reference`` divides by it.

Short sweep: 8 runs of 1-2 s each (written below) with ``--jobs 1`` and
``--jobs 2``, back to back, fresh result directories; ``jobs2_vs_jobs1`` is the
ratio of their wall times. On a short sweep the start-up is a large part of the
wall time, which the minute-long quickstart (``benchmarks/sweeps.py``) hides.

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
train: {steps: 200, batch_size: 32, eval_every: 50}
seeds: [0, 1, 2, 3]
grid:
  model.cell: [vanilla, lstm]
"""

REFERENCE = "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"


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
        for i in range(args.repeat):
            reference.append(wall([sys.executable, "-c", REFERENCE]))
            for jobs in (1, 2):
                first[jobs].append(first_step(tmp / "first.yaml", tmp / f"first{jobs}_{i}", jobs))
            one = wall(command(tmp / "short.yaml", tmp / f"short1_{i}", 1))
            two = wall(command(tmp / "short.yaml", tmp / f"short2_{i}", 2))
            for key, value in (("jobs1_s", one), ("jobs2_s", two), ("jobs2_vs_jobs1", two / one)):
                ratio[key].append(value)
    ref = statistics.median(reference)
    report = {
        "reference_import_torch_and_adam_s": figures(reference),
        "first_step": {f"jobs{j}_s": figures(first[j]) for j in (1, 2)}
        | {f"jobs{j}_vs_reference": round(statistics.median(first[j]) / ref, 2) for j in (1, 2)},
        "short_sweep": {"runs": 8, **{key: figures(values) for key, values in ratio.items()}},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
