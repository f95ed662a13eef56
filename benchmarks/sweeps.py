"""Sweep benchmark: wall time of --jobs 2 against --jobs 1, and the Ray executor's per-run overhead.

    python benchmarks/sweeps.py [CONFIG] [--ray]

Runs the same sweep back to back in this process's machine (fresh result
directories, so nothing is skipped) and prints ratios, which survive a noisy
machine better than absolute times.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: overhead
task: {name: adding, length: 10, eval_size: 16}
model: {hidden: 8}
train: {steps: 1, batch_size: 4, eval_every: 1}
seeds: SEEDS
"""


def wall(config: Path, out: Path, *options: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gradlab", "run", str(config), "--out", str(out), "-q", "-f", "json",
                    *options], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--ray", action="store_true", help="also measure the Ray executor's overhead per run")
    args = parser.parse_args()
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = wall(Path(args.config), tmp / "j1", "--jobs", "1")
        two = wall(Path(args.config), tmp / "j2", "--jobs", "2")
        report["sweep"] = {"config": args.config, "jobs1_s": round(one, 2), "jobs2_s": round(two, 2),
                           "jobs2_vs_jobs1": round(two / one, 3)}
        if args.ray:
            # near-empty runs: the time per run is the executor's overhead. The slope between a
            # 4-run and a 20-run sweep separates it from the start-up (interpreter, Ray instance).
            per_run, fixed = {}, {}
            for executor, options in (("local", ["--jobs", "2"]), ("ray", ["--executor", "ray"])):
                times = {}
                for n in (4, 20):
                    tiny = tmp / f"tiny{n}.yaml"
                    tiny.write_text(TINY.replace("SEEDS", str(list(range(n)))))
                    times[n] = wall(tiny, tmp / f"{executor}{n}", *options)
                per_run[executor] = (times[20] - times[4]) / 16
                fixed[executor] = times[4] - 4 * per_run[executor]
            report["executor_overhead"] = {
                "local_per_run_s": round(per_run["local"], 3), "ray_per_run_s": round(per_run["ray"], 3),
                "ray_extra_per_run_s": round(per_run["ray"] - per_run["local"], 3),
                "local_startup_s": round(fixed["local"], 2), "ray_startup_s": round(fixed["ray"], 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
