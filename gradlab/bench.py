"""How fast is gradlab's hand-written BPTT? A benchmark of one training step per cell.

Three contenders run the same step (forward, MSE loss of a readout at the last
step, backward, Adam step) on the same data:

- ``engine``: ``RecurrentNet(engine="scan")`` with a ``Probe`` on, so the
  per-step hidden-gradient norms are recorded;
- ``fused``: torch's own module for the cell, its registry entry's ``fused``
  twin (``nn.RNN`` tanh/ReLU, ``nn.LSTM``, ``nn.GRU``; none exists for skip),
  which cannot record them;
- ``autograd``: the cell unrolled under autograd (``recurrences.unroll``) with the
  Probe on, the usual way to get per-step gradients.

Timings are medians of ``repeats`` rounds after ``warmup`` rounds; within a
round the contenders alternate, so drifts in machine speed hit all alike. On
CPU the benchmark runs on one thread with denormals flushed (REFERENCE §6:
vanishing gradients produce subnormal floats that are many times slower) and,
by default, times the process's CPU time, which other processes on a shared
machine do not inflate; on CUDA it times the wall clock between synchronisations.

Running three contenders in one process has an artefact a training run does
not: glibc hands the memory one contender frees back to the OS, and the next
one's large buffers then page-fault afresh (measured here: +30 ms on the LSTM
engine step, most of it system time). So that each is timed in the steady
state it has when training alone, ``bench`` turns glibc's heap trimming off
for the rest of the process (``mallopt``; Linux only). Nothing here prints;
the CLI formats the results.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from gradlab.cells import CELLS, RecurrentNet
from gradlab.recurrences import Probe
from gradlab.training import torch_settings
from gradlab.vocabulary import CELL_NAMES

INPUTS = 2  # input channels, as in the adding task
SCHEMA = "gradlab.bench/1"  # of `gradlab bench --json`'s rows; new keys keep it, a changed or dropped key bumps it


def bench(cells=CELL_NAMES, length=200, batch=64,
          hidden=128, device="cpu", repeats=15, warmup=3, seed=0, clock="auto") -> list[dict]:
    """Median milliseconds of one training step per cell and contender, float32.

    Returns one dict per cell: cell, engine_ms, fused_ms, autograd_ms and the
    ratios engine_vs_fused = fused_ms / engine_ms and engine_vs_autograd =
    autograd_ms / engine_ms (> 1: gradlab's engine is faster; None where torch
    has no fused module for the cell). clock: "cpu" (process CPU time), "wall",
    or "auto" (cpu on CPU, wall on CUDA).
    """
    if clock not in ("auto", "cpu", "wall"):
        raise ValueError(f"clock must be auto, cpu or wall; got {clock!r}")
    cuda = torch.device(device).type == "cuda"
    timer = time.perf_counter if clock == "wall" or (clock == "auto" and cuda) else time.process_time
    _keep_heap()
    with _one_thread(device):
        return [_bench_cell(cell, length, batch, hidden, device, repeats, warmup, seed, timer)
                for cell in cells]


def _bench_cell(cell, length, batch, hidden, device, repeats, warmup, seed, timer):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(length, batch, INPUTS, generator=gen).to(device)
    y = torch.rand(batch, 1, generator=gen).to(device)
    steps = {"engine": _step(_gradlab(cell, hidden, seed, "scan", device), x, y, probe=True),
             "autograd": _step(_gradlab(cell, hidden, seed, "autograd", device), x, y, probe=True)}
    if CELLS[cell].fused is not None:
        steps["fused"] = _step(_fused(cell, hidden, seed, device), x, y, probe=False)
    times = {name: [] for name in steps}
    for r in range(warmup + repeats):
        for name, step in steps.items():
            ms = _time(step, device, timer)
            if r >= warmup:
                times[name].append(ms)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    fused = med.get("fused")
    return {"cell": cell, "engine_ms": med["engine"], "fused_ms": fused, "autograd_ms": med["autograd"],
            "engine_vs_fused": None if fused is None else fused / med["engine"],
            "engine_vs_autograd": med["autograd"] / med["engine"]}


def _gradlab(cell, hidden, seed, engine, device):
    return RecurrentNet(cell, INPUTS, hidden, 1, engine=engine, seed=seed).to(device)


class _Fused(nn.Module):
    """torch's fused module with the same weights as gradlab's cell, and the same readout."""

    def __init__(self, cell, hidden, seed):
        super().__init__()
        ref = RecurrentNet(cell, INPUTS, hidden, 1, seed=seed)
        self.rnn = CELLS[cell].fused(INPUTS, hidden)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.rnn, name + "_l0").copy_(getattr(ref, name))
        self.readout = ref.readout

    def forward(self, x):
        return self.rnn(x)[0]


def _fused(cell, hidden, seed, device):
    return _Fused(cell, hidden, seed).to(device)


def _step(model, x, y, *, probe):
    """A closure running one training step: forward, MSE at the last step, backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fused = isinstance(model, _Fused)

    def step():
        opt.zero_grad(set_to_none=True)
        if fused:
            hs = model(x)
        else:
            state = model.initial_state(x.shape[1], device=x.device, dtype=x.dtype)
            hs, _ = model(x, state, probe=Probe() if probe else None)
        loss = nn.functional.mse_loss(model.readout(hs[-1]), y)
        loss.backward()
        opt.step()
    return step


def _time(step, device, timer) -> float:
    _sync(device)
    start = timer()
    step()
    _sync(device)
    return (timer() - start) * 1e3


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _keep_heap():
    """glibc: never trim the heap, and serve blocks up to 32 MiB (its maximum) from it, not mmap."""
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or not name:
        return
    mallopt = ctypes.CDLL(name).mallopt
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_mmap_threshold, 32 << 20)


@contextlib.contextmanager
def _one_thread(device):
    """On CPU: one thread and flushed denormals for the duration (the caller's come back after)."""
    if torch.device(device).type != "cpu":
        yield
        return
    with torch_settings(torch.device(device), 1):
        yield


def peak_memory(cell, length, batch=64, hidden=128, device="cpu", engine="scan", probe=True) -> int:
    """Peak memory in bytes taken by one training step (above what model and data hold).

    engine: "scan" | "autograd" | "fused". On CUDA: torch.cuda.max_memory_allocated
    around the step. On CPU, where torch's allocator keeps no statistics, the
    step runs in a fresh Python process and the figure is the growth of the
    process's peak resident set (getrusage ru_maxrss) across the step.
    """
    args = [cell, length, batch, hidden, device, engine, probe]
    if torch.device(device).type == "cuda":
        return _measure_step_memory(*args)
    code = f"from gradlab.bench import _measure_step_memory as m; print(m(*{args!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {out.stderr.strip().splitlines()[-1:]}")
    return int(out.stdout.split()[-1])


def _measure_step_memory(cell, length, batch, hidden, device, engine, probe):
    """Run in a fresh process on CPU: bytes of peak growth during one training step."""
    with _one_thread(device):
        if engine == "fused":
            model = _fused(cell, hidden, 0, device)
        else:
            model = _gradlab(cell, hidden, 0, engine, device)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(length, batch, INPUTS, generator=gen).to(device)
        y = torch.rand(batch, 1, generator=gen).to(device)
        step = _step(model, x, y, probe=probe and engine != "fused")
        _step(model, x[:1], y, probe=False)()  # lazy initialisation (Adam state, BLAS buffers) first
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.max_memory_allocated(device)
            step()
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - before
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # Linux: KiB


if __name__ == "__main__":
    for row in bench(*[tuple(sys.argv[1:])] if sys.argv[1:] else []):
        print(json.dumps(row))
