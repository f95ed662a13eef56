"""GradientMonitor benchmark: the cost of ``monitor.step()`` in a real small training loop.

    python benchmarks/monitor.py [--steps 200]

The loop is the README's classifier (a 2-layer nn.LSTM, 8 -> 64 units, T = 50,
B = 32, a linear head, Adam, norm clipping at 1.0), one thread, denormals flushed.
The contenders take turns step by step, in this process: the loop as written,
the same loop with ``monitor.step(loss)`` after backward, and (with tensorboard
installed) the monitor writing its scalars to a SummaryWriter. It prints the
median time per step of each and their ratio to the plain loop, which survive
a noisy machine better than absolute times, and the median time inside
``monitor.step`` alone, as a share of the plain step.
"""

import argparse
import json
import statistics
import tempfile
import time

import torch
from torch import nn

import gradlab

T, B, FEATURES, HIDDEN = 50, 32, 8, 64


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, x):  # x: (B, T, FEATURES)
        return self.head(self.lstm(x)[0][:, -1])


def timed_step(model, optimizer, x, y, monitor) -> tuple[float, float]:
    """Seconds of one training step and of it in ``monitor.step`` (0 without a monitor)."""
    start, in_monitor = time.perf_counter(), 0.0
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    if monitor is not None:
        t = time.perf_counter()
        monitor.step(loss)
        in_monitor = time.perf_counter() - t
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return time.perf_counter() - start, in_monitor


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per contender (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(B, T, FEATURES, generator=gen), torch.randint(0, 2, (B,), generator=gen))
               for _ in range(20)]
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    contenders = {"plain": None, "monitor": gradlab.GradientMonitor(model)}
    with tempfile.TemporaryDirectory() as logdir:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(logdir)
            contenders["monitor+writer"] = gradlab.GradientMonitor(model, writer=writer)
        except ImportError:
            writer = None
        times, inside = {name: [] for name in contenders}, {name: [] for name in contenders}
        for i in range(-5, args.steps):  # 5 warm-up steps; then the contenders take turns, step by step
            x, y = batches[i % len(batches)]
            for name, monitor in contenders.items():
                step, in_monitor = timed_step(model, optimizer, x, y, monitor)
                if i >= 0:
                    times[name].append(step)
                    inside[name].append(in_monitor)
        if writer is not None:
            writer.close()
    median = {name: statistics.median(ts) for name, ts in times.items()}
    in_step = {name: statistics.median(ts) for name, ts in inside.items() if name != "plain"}
    report = {"loop": f"2-layer LSTM {FEATURES}->{HIDDEN}, T={T}, B={B}, Adam, clip 1.0, 1 thread",
              "steps": args.steps,
              **{f"{name}_ms_per_step": round(1e3 * m, 2) for name, m in median.items()},
              **{f"{name}_vs_plain": round(m / median["plain"], 3) for name, m in median.items() if name != "plain"},
              # the time inside monitor.step alone, against the plain step: the same cost, less noise
              **{f"{name}_step_ms": round(1e3 * m, 3) for name, m in in_step.items()},
              **{f"{name}_step_share": round(m / median["plain"], 4) for name, m in in_step.items()}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
