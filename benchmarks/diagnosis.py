"""Issue 23's figures benchmark: what each costs per evaluation as a share of a default-size run.

    python benchmarks/diagnosis.py [--cells vanilla lstm gru] [--rounds 7] [--length 50] [--batch 32]
                                   [--eval-size 1000] [--hidden 64] [--eval-every 100] [--steps 1000]

The run is gradlab's own at the defaults of ``gradlab.defaults`` (adding, T = 50, 1000 evaluation sequences,
64 units, batch 32, Adam, full BPTT, evaluation every 100 steps of 1000; ``--length 40 --batch 64
--eval-size 500 --eval-every 250 --steps 2000`` is configs/quickstart.yaml), one thread, denormals
flushed, in this process. The contenders take turns, round by round (the machine's noise hits them
alike; the medians of ``--rounds`` are reported), timing what ``gradlab.training`` does:

- ``train_step``: one training step (``training.train_step``), the reference;
- ``evaluation``: what an evaluation costs without issue 23's figures: the hidden states and scores of
  the evaluation set and the gradient-through-time profile of the probe batch without a cut
  (``gradient_profiles_and_shares(..., cut=None)``);
- ``long_term_share``: the profile with the cut minus the profile without it, the share's own cost (a
  difference of two medians: on a noisy machine it can come out below 0; both times are printed);
- ``memory``: ``memory.memory`` on the evaluation set's states (at every evaluation);
- ``memory_curve``: ``memory.run_curve`` on them (recorded at the last evaluation only);
- ``lyapunov``: ``lyapunov.model_spectrum`` of the probe batch, k = 4 (opt-in: ``diagnostics.lyapunov``).

For each it prints the median time, its ratio to a training step, and its share of the run's wall time
when measured at every evaluation: time / (eval_every x train_step + evaluation), what the figure adds
over the interval between two evaluations (target <= 10 %). The memory curve's share of a whole run, as
training records it (once), is time / (steps x train_step + evaluations x evaluation).
"""

import argparse
import json
import statistics
import time

import torch

from gradlab import lyapunov, memory, training
from gradlab.defaults import ModelConfig, TaskConfig, TrainConfig
from gradlab.remedies import make_clipper
from gradlab.tasks import resolve

LYAPUNOV_K = 4


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def setup(cell: str, args):
    cfg = {"task": {"name": "adding", "length": args.length},
           "model": {"cell": cell, "hidden": args.hidden}, "seed": 0}
    task = resolve(cfg["task"])
    model = training.build_model(cfg, task, torch.device("cpu"), torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=TrainConfig.lr)
    clipper = make_clipper({"kind": "none"}, model)
    gen = torch.Generator().manual_seed(0)
    eval_batch = task.evaluation_set(args.eval_size, args.length, gen)
    probe = training.probe_batch(task, eval_batch)
    batch = task.generate(args.batch, args.length, gen)
    cut = task.dependency(args.length) + 1  # as training.diagnose cuts

    def step():
        training.train_step(model, task, batch, optimizer, clipper, None, "skip")

    def evaluation():
        hs = memory.hidden_states(model, eval_batch)
        training.evaluate(model, task, eval_batch, hs)
        training.gradient_profiles_and_shares(model, task, probe, None, None)

    def with_share():
        training.gradient_profiles_and_shares(model, task, probe, None, cut)

    def profile_only():
        training.gradient_profiles_and_shares(model, task, probe, None, None)

    hs = memory.hidden_states(model, eval_batch)
    contenders = {
        "train_step": step,
        "evaluation": evaluation,
        "profile_with_cut": with_share,
        "profile_without_cut": profile_only,
        "memory": lambda: memory.memory(model, task, eval_batch, args.length, hs=hs),
        "memory_curve": lambda: memory.run_curve(model, task, eval_batch, args.length, hs=hs),
        "lyapunov": lambda: lyapunov.model_spectrum(model, probe.x, min(LYAPUNOV_K, model.hidden)),
    }
    return contenders, memory.run_curve(model, task, eval_batch, args.length, hs=hs)["lags"]


def measure(cell: str, args) -> dict:
    contenders, lags = setup(cell, args)
    for fn in contenders.values():  # warm-up: the engine, Adam's state, torch.func's first call
        fn()
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            times[name].append(statistics.median(timed(fn) for _ in range(3 if name == "train_step" else 1)))
    t = {name: statistics.median(v) for name, v in times.items()}
    # the share's own cost: a difference of two medians, so it can come out below 0 on a noisy machine (shown
    # as measured, with the two times it is taken from)
    with_cut, without_cut = t.pop("profile_with_cut"), t.pop("profile_without_cut")
    t["long_term_share"] = with_cut - without_cut
    interval = args.eval_every * t["train_step"] + t["evaluation"]
    evaluations = args.steps // args.eval_every + 1
    run = args.steps * t["train_step"] + evaluations * t["evaluation"]
    out = {"curve_lags": lags, "train_step_ms": round(1e3 * t["train_step"], 2),
           "evaluation_ms": round(1e3 * t["evaluation"], 2),
           "evaluation_share_at_eval_every": round(t["evaluation"] / interval, 4)}
    for name in ("long_term_share", "memory", "memory_curve", "lyapunov"):
        out[name] = {"ms": round(1e3 * t[name], 2), "vs_train_step": round(t[name] / t["train_step"], 3),
                     "share_if_every_evaluation": round(t[name] / interval, 4)}
    out["long_term_share"] |= {"profile_with_cut_ms": round(1e3 * with_cut, 2),
                               "profile_without_cut_ms": round(1e3 * without_cut, 2)}
    out["memory_curve"]["share_of_run_at_last_evaluation"] = round(t["memory_curve"] / run, 5)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["vanilla", "lstm", "gru"])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per contender (median reported)")
    parser.add_argument("--length", type=int, default=TaskConfig.length)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--eval-size", type=int, default=TaskConfig.eval_size)
    parser.add_argument("--hidden", type=int, default=ModelConfig.hidden)
    parser.add_argument("--eval-every", type=int, default=TrainConfig.eval_every)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    report = {"run": f"adding T={args.length}, eval_size={args.eval_size}, hidden={args.hidden}, "
                     f"batch={args.batch}, Adam, full BPTT, eval_every={args.eval_every}, steps={args.steps}, "
                     "1 thread", "rounds": args.rounds, "lyapunov_k": LYAPUNOV_K}
    for cell in args.cells:
        report[cell] = measure(cell, args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
