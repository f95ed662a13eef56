"""Lyapunov spectrum benchmark: ``lyapunov.model_spectrum`` against one training step of the same model.

    python benchmarks/lyapunov.py [--k 4 8] [--rounds 5] [--sequences 8]

The model is gradlab's own: a one-layer ``RecurrentNet`` lstm, 8 -> 64 units (its state (h, c) has
128 numbers), engine scan, a linear readout of the last step, cross-entropy, Adam; T = 100, B = 32;
one thread, denormals flushed. The contenders take turns, round by round, in this process: one
training step, and ``model_spectrum`` (the top k exponents, float64, for each ``--k``) on the first
``--sequences`` of the same batch (its ``sequences`` argument, default ``lyapunov.SEQUENCES`` = 8: the
exponents are averages over the sequences, so fewer cost less and still estimate them). It prints
the median time of each and their ratio, and what one spectrum per
evaluation costs as a share of a run's training at the default ``eval_every`` (``ratio / eval_every``).
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn

from gradlab import lyapunov
from gradlab.cells import RecurrentNet
from gradlab.defaults import TrainConfig

T, B, FEATURES, HIDDEN, CLASSES = 100, 32, 8, 64, 2


def train_step(model, optimizer, x, y) -> float:
    start = time.perf_counter()
    optimizer.zero_grad()
    hs, _ = model(x, model.initial_state(B))
    nn.functional.cross_entropy(model.readout(hs[-1]), y).backward()
    optimizer.step()
    return time.perf_counter() - start


def spectrum_time(model, x, k, sequences) -> float:
    start = time.perf_counter()
    lyapunov.model_spectrum(model, x, k, sequences=sequences)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8], help="exponents per layer")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per contender (median reported)")
    parser.add_argument("--sequences", type=int, nargs="+", default=[lyapunov.SEQUENCES],
                        help="sequences the spectrum is run on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(T, B, FEATURES, generator=gen), torch.randint(0, CLASSES, (B,), generator=gen)
    model = RecurrentNet("lstm", FEATURES, HIDDEN, CLASSES, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_step(model, optimizer, x, y)  # warm-up: the engine, Adam's state, torch.func's first call
    spectrum_time(model, x, args.k[0], 2)
    steps, spectra = [], {(k, n): [] for k in args.k for n in args.sequences}
    for _ in range(args.rounds):
        steps.append(statistics.median(train_step(model, optimizer, x, y) for _ in range(5)))
        for k, n in spectra:
            spectra[k, n].append(spectrum_time(model, x, k, n))
    step, eval_every = statistics.median(steps), TrainConfig.eval_every
    report = {"model": f"1-layer lstm {FEATURES}->{HIDDEN}, T={T}, B={B}, Adam, 1 thread",
              "rounds": args.rounds, "train_step_ms": round(1e3 * step, 2)}
    for (k, n), times in spectra.items():
        spec, at = statistics.median(times), f"k{k}_{n}_sequences"
        report |= {f"method_{at}": lyapunov._method("auto", 2 * HIDDEN, k),
                   f"model_spectrum_ms_{at}": round(1e3 * spec, 2),
                   f"spectrum_vs_step_{at}": round(spec / step, 2),
                   f"share_of_training_at_eval_every_{eval_every}_{at}": round(spec / (step * eval_every), 4)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
