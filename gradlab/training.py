"""Train one run from its resolved config; return its summary and metric rows.

The loop reads top to bottom: draw a batch, run it chunk by chunk (one chunk
for full BPTT, windows of ``tbptt`` steps otherwise), back-propagate, clip,
step, and evaluate every ``eval_every`` steps on a fixed held-out set. It never
prints and never writes files: the caller (``sweeps``) stores what it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import time

import numpy as np
import torch

import gradlab
from gradlab import diagnostics, lyapunov, memory, remedies
from gradlab.cells import RecurrentNet
from gradlab.defaults import ModelConfig, TrainConfig
from gradlab.diagnostics import Thresholds
from gradlab.recurrences import RECURRENCES, Probe, long_term_share
from gradlab.remedies import Clipper, clip_gradients, global_norm, make_clipper
from gradlab.tasks import Batch, resolve
from gradlab.vocabulary import MEMORY_CURVE, NORMS_FLOAT64, NORMS_KEY, OPTIMIZERS

EVAL_SEED_OFFSET = 1_000_003  # the evaluation set's generator seed is seed + this: never a training batch
PROFILE_BATCH = 128  # sequences of the evaluation set the gradient profile is measured on


@contextlib.contextmanager
def torch_settings(device: torch.device, threads: int):
    """The process settings a run needs, for the duration of the ``with`` block; the caller's come back after.

    A library user, a notebook or a serial sweep (every run in the driver's process) keeps its own
    thread count and denormal mode, whatever the run set and however it ended.
    """
    threads_before, flush_before = torch.get_num_threads(), flushes_denormals()
    torch.set_num_threads(threads)
    if device.type == "cpu":
        # Vanishing gradients produce subnormal floats, which x86 processes many
        # times slower (an LSTM step went from ~1100 ms to ~80 ms when flushed).
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.set_flush_denormal(flush_before)


def flushes_denormals() -> bool:
    """Whether torch flushes subnormal floats to zero on this thread.

    torch has ``set_flush_denormal`` but no getter, so this makes a subnormal and looks: the
    smallest float64 subnormal, 1e-323, becomes 0 when the mode is on (the example in the docs of
    ``torch.set_flush_denormal``, https://pytorch.org/docs/stable/generated/torch.set_flush_denormal.html).
    """
    return torch.tensor([1e-323], dtype=torch.float64).item() == 0.0


def environment(cfg: dict) -> dict:
    """What a result needs to be traced and reproduced."""
    device = torch.device(cfg["device"])
    env = {"gradlab": gradlab.__version__, "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "host": platform.node(), "cpu_count": os.cpu_count(),
           # the run's threads (torch_settings sets them): a failed run's environment is taken after
           # the caller's came back
           "device": str(device), "threads": cfg["threads"], "seed": cfg["seed"],
           "dtype": cfg["dtype"],
           # the SIMD kernels torch picked (AVX2, AVX512, ...): float32 sums round differently on
           # each, so a run is bit-for-bit reproducible only where this and the rest match
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           # MKL, which does torch's CPU matrix products, picks its own kernels by CPU model unless
           # MKL_CBWR pins them (Intel's "conditional numerical reproducibility": MKL_CBWR=AVX2 gives
           # the same results on every Intel CPU with AVX2): two VMs that both report AVX512 above
           # differed in the 9th digit of a run's first evaluation loss
           "mkl_cbwr": os.environ.get("MKL_CBWR"),
           # the profile's norms are reduced in float64 (engine.hidden_norms) and stored in float64, so
           # no norm is cut at float32's squares (1.1e-19); what is left is the gradient's own floor: in a
           # float32 run entries below 1.2e-38 are 0 (flushed) before any reduction (readers.float32_floor)
           NORMS_KEY: NORMS_FLOAT64}
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def with_defaults(section: dict, defaults) -> dict:
    """A config section over its dataclass's defaults: hand-written and older configs may lack the
    later keys, whose defaults switch their option off."""
    return {**dataclasses.asdict(defaults()), **section}


def build_model(cfg: dict, task, device, dtype) -> RecurrentNet:
    m = with_defaults(cfg["model"], ModelConfig)
    net = RecurrentNet(m["cell"], task.input_size, m["hidden"], task.output_size,
                       nonlinearity=m["nonlinearity"], skip=m["skip"], engine=m["engine"], seed=cfg["seed"],
                       layers=m["layers"], init=m["init"], constrain=m["constrain"],
                       forget_bias=m["forget_bias"], t_max=task.lag(cfg["task"]["length"]), dtype=dtype)
    return net.to(device=device, dtype=dtype)


def detach(state):
    """A state (a tensor, an LSTM's (h, c), a stack's list of them) cut from the graph."""
    if isinstance(state, (tuple, list)):
        return type(state)(detach(s) for s in state)
    return state.detach()


def tbptt_steps(tbptt, S: int) -> tuple[int, int]:
    """``train.tbptt`` as (k1, k2): None -> (S, S), full BPTT; k -> (k, k); {k1, k2} -> (k1, k2)."""
    if not tbptt:
        return S, S
    if isinstance(tbptt, dict):
        return tbptt["k1"], tbptt["k2"]
    return tbptt, tbptt


def chunk_losses(model, task, batch, window, probe: bool = False, grad_transform=None, cut: int | None = None):
    """Yield (t0, loss, probes, hs) for every update of truncated BPTT that carries a loss.

    TBPTT(k1, k2) (Williams & Peng 1990, their BPTT(h; h') with h = k2, h' = k1;
    Sutskever 2013, PhD thesis: every k1 steps, back-propagate k2 steps), from
    ``window`` = ``train.tbptt`` (see ``tbptt_steps``). Update j takes the losses of
    the new steps [a, b) = [j·k1, min((j+1)·k1, S)), so every step's loss is in
    exactly one update, and back-propagates through [t0, b), t0 = max(0, a - (k2 - k1)):
    the model runs over those steps from the state at t0, detached (recomputing the
    k2 - k1 steps the windows overlap by). So the gradient of the loss at step t
    reaches the steps t0..t and no earlier: in an update that spans k2 steps
    (b - t0 = k2), exactly k2 for its last step (the inputs x_{t-k2+1..t}) and
    k2 - (b-1-t) for the others. The first updates, while a < k2 - k1, start at
    step 0 from the initial state and span fewer steps; when k1 does not divide S
    the last one has fewer new steps, and so spans fewer than k2.
    k1 = k2 = k is the plain window: the chunks [jk, (j+1)k), the state carried
    across them but detached. ``window=None`` is full BPTT: one update over all S.

    An update whose new steps carry no loss is skipped. Each loss is normalised by
    the whole sequence's loss count, so the updates' losses add up to the
    full-sequence loss. hs (b - t0, B, H) are the top layer's states of the window
    and ``probes`` (one ``Probe`` per layer, or None) cover the same steps from t0.
    grad_transform goes to the forward (recurrent clipping, Ω's record of ∂L/∂h_t).
    cut (with ``probe``): a step of the sequence; each probe gets it as a step of its window
    (``Probe.cut`` = cut - t0), to split the recurrent weights' gradient there.
    """
    S, B = batch.x.shape[:2]  # batch.x: (S, B, I)
    k1, k2 = tbptt_steps(window, S)
    n_loss = batch.loss_mask.sum()
    state, at = model.initial_state(B, device=batch.x.device, dtype=batch.x.dtype), 0  # the state before step at
    for a in range(0, S, k1):
        b, t0 = min(a + k1, S), max(0, a - (k2 - k1))
        chunk = batch.slice(a, b)
        if not chunk.loss_mask.any():
            continue
        if at < t0:
            with torch.no_grad():  # carry the state to t0 without a graph
                _, state = model(batch.x[at:t0], state)
            at = t0
        p = [Probe(None if cut is None else cut - t0) for _ in model.layers] if probe else None
        hs, final = model(batch.x[t0:b], state, probe=p, grad_transform=grad_transform)  # hs: (b - t0, B, H)
        if k1 == k2:  # no overlap: the next window starts where this one ends
            state, at = detach(final), b
        out = model.readout(hs[a - t0:])  # (b - a, B, O): the new steps only
        yield t0, (task.step_loss(out, chunk.y) * chunk.loss_mask).sum() / n_loss, p, hs


def train_step(model, task, batch, optimizer, clip: dict | Clipper, window: int | None, on_nonfinite: str,
               omega: float = 0.0) -> dict:
    """One batch: one optimizer update per chunk that carries a loss.

    clip: the run's ``Clipper`` (it keeps AutoClip's and ZClip's state across
    steps), or a resolved spec (a fresh one). omega: the weight α of Pascanu's Ω
    (0 = off); α·∂Ω/∂U joins U's gradient before clipping, as in Pascanu's code.
    Records the norms *before* clipping (global and per parameter group) and
    after; with several updates per batch (truncated BPTT) the largest of each,
    and Ω's mean. The norms include the updates dropped as non-finite, as
    computed (NaN wins over any number, then inf); ``clip_active`` and the loss
    count the applied updates only.
    """
    clipper = clip if isinstance(clip, Clipper) else make_clipper(clip, model)
    in_backward = clipper.grad_transform  # a rule that clips ∂L/∂h_t during backward, or None
    hidden = remedies.HiddenGradients(in_backward) if omega else None  # Ω needs every ∂L/∂h_t
    transform = hidden if omega else in_backward
    groups = model.parameter_groups()
    row = {"loss": 0.0, "grad_norm": 0.0, "grad_norm_clipped": 0.0, "clip_active": 0, "nonfinite": 0,
           "updates": 0, **{f"grad_norm_{g}": 0.0 for g in groups}, **({"omega": 0.0} if omega else {})}
    for _, loss, _, hs in chunk_losses(model, task, batch, window, grad_transform=transform):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        extra = []
        if omega:
            reg = remedies.omega(hs.detach(), hidden.pop(hs), model.weight_hh, model.nonlinearity)
            (omega * reg).backward()
            extra = [reg.detach()]
        group_norms = [global_norm([p.grad for p in ps if p.grad is not None]) for ps in groups.values()]
        norm, after = clip_gradients(model.parameters(), clipper)
        loss_v, norm_v, after_v, *group_v = torch.stack([loss.detach(), norm, after, *group_norms, *extra]).tolist()
        omega_v = group_v.pop() if omega else None
        # the norms of every update, applied or dropped: a dropped one's inf/NaN is the evidence
        row["grad_norm"] = _largest(row["grad_norm"], norm_v)
        row["grad_norm_clipped"] = _largest(row["grad_norm_clipped"], after_v)
        for g, v in zip(groups, group_v):
            row[f"grad_norm_{g}"] = _largest(row[f"grad_norm_{g}"], v)
        # the update was changed: its norm cut after backward, or a ∂L/∂h_t clipped inside it (read now,
        # so a dropped update's clipping is not credited to the next one)
        engaged = in_backward.engaged() if in_backward is not None else after_v < norm_v * (1 - 1e-6)
        if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
            row["nonfinite"] = 1
            if on_nonfinite == "stop":
                break
            continue  # skip: drop this update (optax's apply_if_finite)
        optimizer.step()
        row["updates"] += 1
        row["loss"] += loss_v
        row["clip_active"] |= int(engaged)
        if omega:
            row["omega"] += omega_v
    if omega and row["updates"]:
        row["omega"] /= row["updates"]
    if row["nonfinite"]:
        row["loss"] = float("nan")
    return row


def diverged(final_loss: float, nonfinite: list[int], steps: int) -> bool:
    """Whether a run diverged, by one definition for both ``train.on_nonfinite`` policies.

    nonfinite: per batch trained, 1 where an update was non-finite; steps: the batches the run was
    to train (``train.steps``). Diverged: the final evaluation loss is not finite, or, from the
    first non-finite update on, more than half of the run's remaining batches gave no update. Under
    ``skip`` those are the dropped ones; under ``stop`` the run ends at the first, so none after it
    is made: a stopped run is diverged, and so is a skipping run that blew up and stayed so (an IRNN
    at SGD lr 10 that dropped 198 of its 200 updates and ended at a finite loss of 2.9e23), while a
    skipping run that drops a few updates and trains on is not.
    """
    if not math.isfinite(final_loss):
        return True
    first = next((i for i, flag in enumerate(nonfinite) if flag), None)
    if first is None:
        return False
    lost = sum(nonfinite[first:]) + (steps - len(nonfinite))  # dropped, then never trained (stop)
    return lost > (steps - first) / 2


def _largest(a: float, b: float) -> float:
    """max(a, b), but NaN when either is NaN (Python's max keeps whichever comes first)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def gradient_profile(model, task, batch, window, grad_transform=None) -> torch.Tensor:
    """The gradient through time: (S,) Σ_b ‖∂L/∂h_t^(b)‖ over ``batch``, with the run's truncation.

    Layer 0's row of ``gradient_profiles``: for a stack, the layer that reads the input.
    """
    return gradient_profiles(model, task, batch, window, grad_transform)[0]


def gradient_profiles(model, task, batch, window, grad_transform=None) -> torch.Tensor:
    """The gradient through time and depth: (L, S), row l = Σ_b ‖∂L/∂h_t^(l,b)‖ of layer l.

    Computed like a training step (same updates, same loss, the run's recurrent
    clip ``grad_transform``: the profile is the ∂L/∂h_t the updates receive) but
    without an update; the parameters' .grad are cleared afterwards. Where the
    windows of TBPTT(k1, k2 > k1) overlap, p[t] adds the norms from every update
    whose window holds step t (with k1 = k2 each step is in one window).
    """
    return gradient_profiles_and_shares(model, task, batch, window, None, grad_transform)[0]


def gradient_profiles_and_shares(model, task, batch, window, cut: int | None, grad_transform=None):
    """``gradient_profiles`` and, from the same backward passes, each layer's long-term share.

    Returns (profiles (L, S), shares: L floats or None, or None without a cut). The share of layer l is
    ``recurrences.long_term_share`` of G_long = Σ over the updates of the terms of its recurrent weights'
    uses at steps k ≤ cut (``diagnose``: the dependency's step + 1), G_short the rest (Pascanu et al. 2013 §2; see
    ``recurrences.Probe``); G_long + G_short = the weights' gradient summed over the updates.

    - A loss at one step S - 1 (adding, temporal order): G_long is the terms at lags ≥ S - 1 - cut,
      those that carried the gradient back to the dependency.
    - A loss at several steps (copy: the recall steps, ``probe_batch``): the same split at the cut,
      summed over the losses; a term at k ≤ cut then has lag ≥ (the first loss step) - cut, so G_long
      is still the part that travelled at least that far, but the share does not say which losses it
      came from, nor that the symbol at the cut is what they recall.
    - TBPTT: the split applies in each update (a term at k ≤ cut is long wherever its window lies).
      With a window shorter than the lag no loss reaches a term k ≤ cut from farther than the window,
      so the share measures what the truncated gradient puts on the dependency's steps from the
      losses near them (for a loss at the end only: none, 0 - the window cannot carry it).
    - cut = 0 with the zero initial state: U's use at step 0 multiplies h_{-1} = 0, so G_long = 0 and
      the share is 0 by construction (x_0 first meets U at step 1).
    """
    L, S = len(model.layers), batch.x.shape[0]
    profile = torch.zeros(L, S, dtype=torch.float64)  # (L, S)
    parts = [None] * L  # per layer: [G_long parts, G_short parts] summed over the updates
    for t0, loss, probes, _ in chunk_losses(model, task, batch, window, probe=True,
                                            grad_transform=grad_transform, cut=cut):
        loss.backward()
        for i, (row, probe) in enumerate(zip(profile, probes)):
            norms = probe.norms.sum(dim=1)  # (b - t0,)
            row[t0:t0 + norms.shape[0]] += norms.cpu().double()  # to the host first: MPS has no float64
            if cut is not None and probe.long_term is not None:
                parts[i] = _add_parts(parts[i], (probe.long_term, probe.short_term))
    model.zero_grad(set_to_none=True)
    shares = None if cut is None else [None if p is None else long_term_share(*p) for p in parts]
    return profile, shares


def _add_parts(total, parts):
    """(G_long, G_short) summed over the updates: total (or None, the first) + parts, each a tuple of the
    recurrent weights' gradients."""
    if total is None:
        return parts
    return tuple(tuple(a + b for a, b in zip(t, p, strict=True)) for t, p in zip(total, parts, strict=True))


@torch.no_grad()
def evaluate(model, task, batch, hs: torch.Tensor | None = None) -> dict:
    """The task's scores of ``model`` on ``batch``; hs: its top layer's states (S, B, H) when the caller has
    them (``memory.hidden_states``: the evaluation reads them for its memory readout too)."""
    hs = memory.hidden_states(model, batch) if hs is None else hs
    return task.evaluate(model.readout(hs), batch)


def probe_batch(task, eval_batch: Batch) -> Batch:
    """The sequences the gradient profile is measured on: the first PROFILE_BATCH of the
    evaluation set, with the loss taken on the scored steps only (copy: the recall steps),
    so the profile shows the gradient of the part of the loss that needs memory."""
    b, n = eval_batch, min(PROFILE_BATCH, eval_batch.x.shape[1])
    return Batch(b.x[:, :n], b.y[:, :n], b.score_mask[:, :n], b.score_mask[:, :n])


def diagnose(model, task, probe: Batch, window, dependency: int, thresholds: Thresholds, grad_transform=None):
    """Gradient diagnostics at an evaluation: (row entries, profiles (L, S) as numpy).

    The summary figures are of layer 0's profile (the one through which the
    gradient reaches the input); a stack adds ``depth_ratio`` and each layer l > 0's
    spectrum, keys suffixed ``_l<l>``. ``long_term_share`` (``_l<l>``): the share of each layer's
    recurrent-weight gradient from its uses at steps ≤ ``dependency`` + 1, measured in the profile's
    backward (``gradient_profiles_and_shares``). + 1: U's use at step k multiplies h_{k-1}, so step
    d + 1 is its first use on a state that holds the dependency's input x_d (cut at d, a task whose
    dependency is step 0 would always read 0: U's use there multiplies the zero initial state).
    """
    profiles, shares = gradient_profiles_and_shares(model, task, probe, window, dependency + 1, grad_transform)
    profiles = profiles.numpy()  # (L, S)
    summary = diagnostics.profile_summary(profiles[0], dependency, thresholds.horizon_fraction)
    summary["grad_peak"] = summary.pop("peak")
    if len(profiles) > 1:
        summary["depth_ratio"] = diagnostics.depth_ratio(profiles)
    for i, layer in enumerate(model.layers):
        spectrum = diagnostics.recurrent_spectrum(layer.weight_hh.detach(), RECURRENCES[model.recurrence].gates)
        summary.update({k if i == 0 else f"{k}_l{i}": v for k, v in spectrum.items()})
        summary["long_term_share" if i == 0 else f"long_term_share_l{i}"] = shares[i]
    if thresholds.lyapunov:  # opt-in (its cost: Thresholds.lyapunov); each layer driven by the one below
        k = min(thresholds.lyapunov, model.hidden)  # a state has at least H dimensions
        spectra = lyapunov.model_spectrum(model, probe.x, k)
        for i, spectrum in enumerate(spectra):
            summary.update({key if i == 0 else f"{key}_l{i}": v for key, v in lyapunov.summary(spectrum).items()})
        summary["lyapunov_steps"] = lyapunov.averaged_steps(spectra)  # the chaos flag's margin depends on it
    return summary, profiles


def train(cfg: dict, progress=None, rows: list | None = None) -> dict:
    """Train one run. Returns {"summary", "rows", "env", "profile"}.

    profile: {"step": (E,) eval steps, "grad_norm": (E, S) the gradient-through-time
    profile at each evaluation (layer 0's), and for a stack "grad_norm_layers"
    (E, L, S) every layer's, bottom first}. progress(step, steps), if given, is called after
    every training step. rows, if given, receives the metric rows as they are
    made, so a caller keeps them when training raises. The run's thread count and denormal
    mode (``torch_settings``) hold while it trains; the caller's are back when it returns or raises.
    """
    with torch_settings(torch.device(cfg["device"]), cfg["threads"]):
        return _train(cfg, progress, [] if rows is None else rows)


def _train(cfg: dict, progress, rows: list) -> dict:
    device, dtype = torch.device(cfg["device"]), getattr(torch, cfg["dtype"])  # vocabulary.DTYPES: torch's names
    task, length = resolve(cfg["task"]), cfg["task"]["length"]  # no "variant" key = None
    tc = with_defaults(cfg["train"], TrainConfig)
    thresholds, seed = Thresholds(**cfg["diagnostics"]), cfg["seed"]
    dependency = task.dependency(length)

    eval_gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    eval_batch = task.evaluation_set(cfg["task"]["eval_size"], length, eval_gen).to(device, dtype)
    probe = probe_batch(task, eval_batch)
    train_gen = torch.Generator().manual_seed(seed)
    model = build_model(cfg, task, device, dtype)
    omega, weight_decay = tc["omega"], tc["weight_decay"]
    optimizer = getattr(torch.optim, OPTIMIZERS[tc["optimizer"]])(remedies.decay_groups(model, weight_decay),
                                                                  lr=tc["lr"])
    clipper = make_clipper(tc["clip"], model)  # one per run: AutoClip's history, ZClip's statistics

    profiles, profile_steps = [], []
    last_eval, steps_to_solve, diverged_step, nonfinite_steps = None, None, None, 0
    curve = None  # memory.run_curve, measured at the last evaluation only (its cost: benchmarks/diagnosis.py)
    explosion = diagnostics.ExplosionWatch(thresholds)  # the exploding flag of the steps so far, per evaluation
    start = time.perf_counter()
    for step in range(0, tc["steps"] + 1):
        stop = False
        if step > 0:
            batch = task.generate(tc["batch_size"], length, train_gen).to(device, dtype)
            row = train_step(model, task, batch, optimizer, clipper, tc["tbptt"], tc["on_nonfinite"], omega)
            rows.append({"kind": "train", "step": step, **row})
            nonfinite_steps += row["nonfinite"]
            explosion.add(row["grad_norm"] if row["updates"] else float("nan"), row["nonfinite"])
            stop = bool(row["nonfinite"]) and tc["on_nonfinite"] == "stop"
            diverged_step = step if stop else None
        if stop or step % tc["eval_every"] == 0 or step == tc["steps"]:  # step 0: the initialisation
            hs = memory.hidden_states(model, eval_batch)  # (S, B, H): one forward for the scores and the memory
            last_eval = evaluate(model, task, eval_batch, hs)
            figures, profile = diagnose(model, task, probe, tc["tbptt"], dependency, thresholds,
                                        clipper.grad_transform)
            figures.update(memory.memory(model, task, eval_batch, length, hs=hs))  # does the state hold it?
            for key in (k for k in figures if k.startswith("lyapunov_max")):  # every layer's λ₁ (when measured):
                explosion.add_lyapunov(figures[key], figures.get("lyapunov_steps"))  # chaotic dynamics flag the run
            if stop or step == tc["steps"]:  # the last evaluation: memory against lag, in the summary
                curve = memory.run_curve(model, task, eval_batch, length, hs=hs)
            profiles.append(profile)  # (L, S)
            profile_steps.append(step)
            rows.append({"kind": "eval", "step": step, "eval_loss": last_eval["loss"],
                         "eval_accuracy": last_eval["accuracy"], "solved": int(last_eval["solved"]), **figures,
                         # the two flags as far as this evaluation can tell (1/0; empty: unknown): exploding
                         # on the steps so far, vanishing on this evaluation's profile
                         "exploding": int(explosion.exploding()),
                         "vanishing": None if (vanishing := diagnostics.is_vanishing(
                             figures.get("dependency_ratio"), thresholds)) is None else int(vanishing)})
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
    verdict, figures = diagnostics.verdict(norms, nonfinite_steps, profiles[-1][0], dependency, thresholds,
                                           chaotic=explosion.chaotic)
    final_loss = last_eval["loss"]
    summary = {
        "status": "ok",
        "final_loss": final_loss,
        "final_accuracy": last_eval["accuracy"],
        "baseline_loss": task.baseline(length),
        "task_lag": task.lag(length),  # Task.lag: from the first scored step, as task.window counts (gradlab.reach)
        "solved": bool(last_eval["solved"]),
        "steps_to_solve": steps_to_solve,
        "diverged": diverged(final_loss, [r["nonfinite"] for r in train_rows], tc["steps"]),
        "diverged_step": diverged_step,
        "nonfinite_steps": nonfinite_steps,
        "steps_done": len(train_rows),
        "verdict": verdict,
        "exploding": figures["exploding"], "vanishing": figures["vanishing"],  # the flags the verdict names
        **figures,
        # the horizon of the untrained model (step 0's evaluation): how far back the initialisation
        # alone lets a gradient reach
        "horizon_init": next(r["horizon"] for r in rows if r["kind"] == "eval"),
        "grad_norm_max": max((n for n in norms if math.isfinite(n)), default=None),
        "suggested_clip": diagnostics.suggest_clip(norms),
        "clip_rate": sum(r["clip_active"] for r in train_rows) / max(len(train_rows), 1),
        **{k: v for k, v in rows[-1].items()
           if k.startswith(("spectral_radius", "sigma_max", "depth_ratio", "long_term_share", "memory",
                            "lyapunov"))},
        MEMORY_CURVE: curve,  # memory.run_curve at the last evaluation: lags, scores, chance
        "wall_seconds": wall,
        "steps_per_second": len(train_rows) / wall if wall > 0 else None,
    }
    # the diagnostics above saw every step; the stored metrics may keep every k-th (lean result sets)
    log_every = tc["log_every"]
    if log_every > 1:
        rows[:] = [r for r in rows if r["kind"] == "eval" or r["step"] % log_every == 0 or r["nonfinite"]]
    # float64, as computed: float32 would read a sum below 1.4e-45 as 0 where the summary's figures (from
    # these same profiles) do not (a float64 run's dependency ratio of 9e-65)
    by_layer = np.stack(profiles).astype(np.float64)  # (E, L, S)
    profile = {"step": np.asarray(profile_steps, dtype=np.int64), "grad_norm": by_layer[:, 0]}
    if by_layer.shape[1] > 1:
        profile["grad_norm_layers"] = by_layer
    return {"summary": summary, "rows": rows, "env": environment(cfg), "profile": profile}
