"""Train one run from its resolved config; return its summary and metric rows.

The loop reads top to bottom: draw a batch, run it chunk by chunk (one chunk
for full BPTT, windows of ``tbptt`` steps otherwise), back-propagate, clip,
step, and evaluate every ``eval_every`` steps on a fixed held-out set. It never
prints and never writes files: the caller (``sweeps``) stores what it returns.
"""

from __future__ import annotations

import math
import os
import platform
import time

import numpy as np
import torch

import gradlab
from gradlab import diagnostics
from gradlab.cells import GATES, Probe, RecurrentNet
from gradlab.diagnostics import Thresholds
from gradlab import remedies
from gradlab.remedies import Clipper, clip_gradients, global_norm, make_clipper
from gradlab.tasks import Batch, resolve

EVAL_SEED_OFFSET = 1_000_003  # the evaluation set's generator seed is seed + this: never a training batch
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
PROFILE_BATCH = 128  # sequences of the evaluation set the gradient profile is measured on


def setup_torch(device: torch.device, threads: int) -> None:
    """Per-process settings every run needs."""
    torch.set_num_threads(threads)
    if device.type == "cpu":
        # Vanishing gradients produce subnormal floats, which x86 processes many
        # times slower (REFERENCE §6: an LSTM step went from ~1100 ms to ~80 ms).
        torch.set_flush_denormal(True)


def environment(cfg: dict) -> dict:
    """What a result needs to be traced and reproduced."""
    device = torch.device(cfg["device"])
    env = {"gradlab": gradlab.__version__, "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "host": platform.node(), "cpu_count": os.cpu_count(),
           "device": str(device), "threads": torch.get_num_threads(), "seed": cfg["seed"],
           "dtype": cfg["dtype"]}
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def build_model(cfg: dict, task, device, dtype) -> RecurrentNet:
    m = cfg["model"]
    net = RecurrentNet(m["cell"], task.input_size, m["hidden"], task.output_size,
                       nonlinearity=m["nonlinearity"], skip=m["skip"], engine=m["engine"], seed=cfg["seed"])
    return net.to(device=device, dtype=dtype)


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def chunk_losses(model, task, batch, window: int | None, probe: bool = False, grad_transform=None):
    """Yield (t0, loss, probe, hs) for every chunk of ``window`` steps that carries a loss.

    Truncated BPTT (Williams & Peng 1990, k1 = k2 = window): the state is carried
    across chunks but detached, so no gradient crosses a chunk boundary. Each
    chunk's loss is normalised by the whole sequence's loss count, so the chunk
    losses add up to the full-sequence loss. ``window=None`` is full BPTT: one chunk.
    grad_transform goes to the forward (recurrent clipping, Ω's record of ∂L/∂h_t).
    """
    S, B = batch.x.shape[:2]  # batch.x: (S, B, I)
    window = window or S
    n_loss = batch.loss_mask.sum()
    state = model.initial_state(B, device=batch.x.device, dtype=batch.x.dtype)
    for t0 in range(0, S, window):
        chunk = batch.slice(t0, min(t0 + window, S))
        has_loss = bool(chunk.loss_mask.any())
        p = Probe() if probe and has_loss else None
        with torch.set_grad_enabled(has_loss):
            hs, state = model(chunk.x, state, probe=p, grad_transform=grad_transform)  # hs: (k, B, H)
        state = detach(state)
        if has_loss:
            out = model.readout(hs)  # (k, B, O)
            yield t0, (task.step_loss(out, chunk.y) * chunk.loss_mask).sum() / n_loss, p, hs


def train_step(model, task, batch, optimizer, clip: dict, window: int | None, on_nonfinite: str) -> dict:
    """One batch: one optimizer update per chunk that carries a loss.

    Records the norms *before* clipping (global and per parameter group) and
    after; with several updates per batch (truncated BPTT) the largest of each.
    """
    groups = model.parameter_groups()
    row = {"loss": 0.0, "grad_norm": 0.0, "grad_norm_clipped": 0.0, "clip_active": 0, "nonfinite": 0,
           "updates": 0, **{f"grad_norm_{g}": 0.0 for g in groups}}
    for _, loss, _ in chunk_losses(model, task, batch, window):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        group_norms = [global_norm([p.grad for p in ps if p.grad is not None]) for ps in groups.values()]
        norm, after = clip_gradients(model.parameters(), clip)
        loss_v, norm_v, after_v, *group_v = torch.stack([loss.detach(), norm, after, *group_norms]).tolist()
        if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
            row["nonfinite"] = 1
            if on_nonfinite == "stop":
                break
            continue  # skip: drop this update (optax's apply_if_finite)
        optimizer.step()
        row["updates"] += 1
        row["loss"] += loss_v
        row["grad_norm"] = max(row["grad_norm"], norm_v)
        row["grad_norm_clipped"] = max(row["grad_norm_clipped"], after_v)
        row["clip_active"] |= int(after_v < norm_v * (1 - 1e-6))
        for g, v in zip(groups, group_v):
            row[f"grad_norm_{g}"] = max(row[f"grad_norm_{g}"], v)
    if row["nonfinite"]:
        row["loss"] = float("nan")
    return row


def gradient_profile(model, task, batch, window: int | None) -> torch.Tensor:
    """The gradient through time: (S,) Σ_b ‖∂L/∂h_t^(b)‖ over ``batch``, with the run's truncation.

    Computed like a training step (same chunks, same loss) but without an
    update; the parameters' .grad are cleared afterwards.
    """
    S = batch.x.shape[0]
    profile = torch.zeros(S, dtype=torch.float64)
    for t0, loss, probe in chunk_losses(model, task, batch, window, probe=True):
        loss.backward()
        norms = probe.norms.sum(dim=1)  # (k,)
        profile[t0:t0 + norms.shape[0]] = norms.double().cpu()
    model.zero_grad(set_to_none=True)
    return profile


@torch.no_grad()
def evaluate(model, task, batch) -> dict:
    state = model.initial_state(batch.x.shape[1], device=batch.x.device, dtype=batch.x.dtype)
    hs, _ = model(batch.x, state)
    return task.evaluate(model.readout(hs), batch)


def probe_batch(task, eval_batch: Batch) -> Batch:
    """The sequences the gradient profile is measured on: the first PROFILE_BATCH of the
    evaluation set, with the loss taken on the scored steps only (copy: the recall steps),
    so the profile shows the gradient of the part of the loss that needs memory."""
    b, n = eval_batch, min(PROFILE_BATCH, eval_batch.x.shape[1])
    return Batch(b.x[:, :n], b.y[:, :n], b.score_mask[:, :n], b.score_mask[:, :n])


def diagnose(model, task, probe: Batch, window, dependency: int, thresholds: Thresholds):
    """Gradient diagnostics at an evaluation: (row entries, profile (S,) as numpy)."""
    profile = gradient_profile(model, task, probe, window).numpy()
    summary = diagnostics.profile_summary(profile, dependency, thresholds.horizon_fraction)
    summary["grad_peak"] = summary.pop("peak")
    spectrum = diagnostics.recurrent_spectrum(model.weight_hh.detach(), GATES[model.recurrence])
    return {**summary, **spectrum}, profile


def train(cfg: dict, progress=None, rows: list | None = None) -> dict:
    """Train one run. Returns {"summary", "rows", "env", "profile"}.

    profile: {"step": (E,) eval steps, "grad_norm": (E, S) the gradient-through-time
    profile at each evaluation}. progress(step, steps), if given, is called after
    every training step. rows, if given, receives the metric rows as they are
    made, so a caller keeps them when training raises.
    """
    device, dtype = torch.device(cfg["device"]), DTYPES[cfg["dtype"]]
    setup_torch(device, cfg["threads"])
    task, tc, length = resolve(cfg["task"]), cfg["train"], cfg["task"]["length"]  # no "variant" key = None
    thresholds, seed = Thresholds(**cfg["diagnostics"]), cfg["seed"]
    dependency = task.dependency(length)

    eval_gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    eval_batch = task.generate(cfg["task"]["eval_size"], length, eval_gen).to(device, dtype)
    probe = probe_batch(task, eval_batch)
    train_gen = torch.Generator().manual_seed(seed)
    model = build_model(cfg, task, device, dtype)
    optimizer = OPTIMIZERS[tc["optimizer"]](model.parameters(), lr=tc["lr"])

    rows = [] if rows is None else rows
    profiles, profile_steps = [], []
    last_eval, steps_to_solve, diverged_step, nonfinite_steps = None, None, None, 0
    start = time.perf_counter()
    for step in range(0, tc["steps"] + 1):
        stop = False
        if step > 0:
            batch = task.generate(tc["batch_size"], length, train_gen).to(device, dtype)
            row = train_step(model, task, batch, optimizer, tc["clip"], tc["tbptt"], tc["on_nonfinite"])
            rows.append({"kind": "train", "step": step, **row})
            nonfinite_steps += row["nonfinite"]
            stop = bool(row["nonfinite"]) and tc["on_nonfinite"] == "stop"
            diverged_step = step if stop else None
        if stop or step % tc["eval_every"] == 0 or step == tc["steps"]:  # step 0: the initialisation
            last_eval = evaluate(model, task, eval_batch)
            figures, profile = diagnose(model, task, probe, tc["tbptt"], dependency, thresholds)
            profiles.append(profile)
            profile_steps.append(step)
            rows.append({"kind": "eval", "step": step, "eval_loss": last_eval["loss"],
                         "eval_accuracy": last_eval["accuracy"], "solved": int(last_eval["solved"]), **figures})
            if last_eval["solved"] and steps_to_solve is None and step > 0:
                steps_to_solve = step
        if progress and step > 0:
            progress(step, tc["steps"])
        if stop:
            break
    wall = time.perf_counter() - start

    train_rows = [r for r in rows if r["kind"] == "train"]
    # a skipped (non-finite) step has no norm: NaN, so it cannot pull the running medians
    norms = [r["grad_norm"] if r["updates"] else float("nan") for r in train_rows]
    verdict, figures = diagnostics.verdict(norms, nonfinite_steps, profiles[-1], dependency, thresholds)
    final_loss = last_eval["loss"]
    summary = {
        "status": "ok",
        "final_loss": final_loss,
        "final_accuracy": last_eval["accuracy"],
        "baseline_loss": task.baseline(length),
        "solved": bool(last_eval["solved"]),
        "steps_to_solve": steps_to_solve,
        "diverged": diverged_step is not None or not math.isfinite(final_loss),
        "diverged_step": diverged_step,
        "nonfinite_steps": nonfinite_steps,
        "steps_done": len(train_rows),
        "verdict": verdict,
        **figures,
        "grad_norm_max": max((n for n in norms if math.isfinite(n)), default=None),
        "suggested_clip": diagnostics.suggest_clip(norms),
        "clip_rate": sum(r["clip_active"] for r in train_rows) / max(len(train_rows), 1),
        **{k: v for k, v in rows[-1].items() if k.startswith(("spectral_radius", "sigma_max"))},
        "wall_seconds": wall,
        "steps_per_second": len(train_rows) / wall if wall > 0 else None,
    }
    profile = {"step": np.asarray(profile_steps, dtype=np.int64),
               "grad_norm": np.stack(profiles).astype(np.float32)}
    return {"summary": summary, "rows": rows, "env": environment(cfg), "profile": profile}
