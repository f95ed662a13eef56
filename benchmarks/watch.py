"""gradlab.watch benchmark: a training step inside ``watch`` (gradlab's engine) against the fused module.

    python benchmarks/watch.py [--steps 20] [--rounds 7]

The README's classifier (a 2-layer nn.LSTM, 8 -> 32 units, batch_first, a
linear head, Adam) at T = 50, B = 16, and a larger one (1 layer, 128 units,
T = 200, B = 64, as ``gradlab bench``), one thread, denormals flushed. Rounds
of ``--steps`` steps alternate between the plain loop (torch's fused kernel)
and the same loop with each step inside ``with gradlab.watch(model.lstm)``, in
this process; it prints the median time per step of each and their ratio.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn

import gradlab

SHAPES = {"readme": (2, 8, 32, 50, 16), "bench": (1, 2, 128, 200, 64)}  # layers, inputs, hidden, T, B


class Classifier(nn.Module):
    def __init__(self, layers, inputs, hidden):
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):  # x: (B, T, inputs)
        return self.head(self.lstm(x)[0][:, -1])


def timed_round(model, optimizer, batches, watched: bool) -> float:
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad()
        if watched:
            with gradlab.watch(model.lstm):
                nn.functional.cross_entropy(model(x), y).backward()
        else:
            nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - start) / len(batches)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per contender (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    report = []
    for layers, inputs, hidden, T, B in SHAPES.values():
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        batches = [(torch.randn(B, T, inputs, generator=gen), torch.randint(0, 2, (B,), generator=gen))
                   for _ in range(args.steps)]
        model = Classifier(layers, inputs, hidden)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for watched in (False, True):  # warm-up
            timed_round(model, optimizer, batches[:3], watched)
        times = {False: [], True: []}
        for _ in range(args.rounds):
            for watched in times:
                times[watched].append(timed_round(model, optimizer, batches, watched))
        fused, watched = statistics.median(times[False]), statistics.median(times[True])
        report.append({"model": f"{layers}-layer LSTM {inputs}->{hidden}, T={T}, B={B}, Adam, 1 thread",
                       "fused_ms_per_step": round(1e3 * fused, 2), "watch_ms_per_step": round(1e3 * watched, 2),
                       "watch_vs_fused": round(watched / fused, 3)})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
