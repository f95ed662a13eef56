"""Remedies for exploding gradients that act on the gradient: clipping rules, Pascanu's Ω
regulariser, weight decay.

A clipping rule is a plain registry entry (``CLIPS``): its parameters with their
defaults and checks (validation reads them), a one-line description, and where it
acts: a function that clips the gradients of a list of parameters in place after
backward, or (``recurrent``) a per-step clip of ∂L/∂h_t handed to the engine's
``grad_transform`` hook inside backward. A new rule is one entry and one function.
A run binds its rule once into a ``Clipper``, which keeps the state the adaptive
rules carry across steps (AutoClip's norm history, ZClip's moving statistics).
Truncated BPTT lives in the training loop (it decides where the backward pass
stops), not here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from gradlab import checks
from gradlab.vocabulary import EXPLODING
from gradlab.yamlfile import did_you_mean


@dataclass(frozen=True)
class Param:
    """A clipping rule's parameter: its default and its check (``gradlab.checks``: value -> message or None)."""

    default: object
    check: Callable


@dataclass(frozen=True)
class ClipRule:
    """A registry entry: the rule's parameters and where it acts.

    ``after_backward(params, norm, state, **parameters)`` clips each p.grad in place once backward is
    done; ``in_backward(**parameters)`` makes a ``grad_transform(t, g)`` that clips ∂L/∂h_t (B, H) at every
    step inside backward, with an ``engaged()`` that says whether it clipped since last asked. A rule has
    either, or neither (``none``).
    """

    params: dict[str, Param]
    description: str
    after_backward: Callable | None = None
    in_backward: Callable | None = None
    clips_readout: bool = True  # False: the readout's gradient is left as it is (AGC)
    # the cases of a diagnosis (gradlab.vocabulary.CASES) the rule treats: gradlab.diagnosis proposes
    # ``train.clip: <name>`` for them. Every rule but none caps the update a spike would make (Pascanu et
    # al. 2013 §3.2); none caps nothing. Its DECLARED copy is kept equal to these by a test.
    addresses: frozenset = frozenset({EXPLODING})


def global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """‖g‖₂ over all parameters together (Pascanu et al. 2013, Algorithm 1), as a 0-d tensor."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clip_norm(params, norm, state, max_norm: float) -> None:
    """Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063), Algorithm 1: if ‖g‖ ≥ c then g ← c·g/‖g‖."""
    scale = torch.clamp(max_norm / norm, max=1.0)  # stays on device: no host sync per step
    for p in params:
        p.grad.mul_(scale)


def clip_value(params, norm, state, clip_value: float) -> None:
    """Element-wise clipping g_i ← clamp(g_i, −c, c) (Mikolov 2012, thesis §3.2.2)."""
    for p in params:
        p.grad.clamp_(-clip_value, clip_value)


def clip_param_norm(params, norm, state, max_norm: float) -> None:
    """Each parameter tensor's gradient on its own: g_p ← g_p·min(1, c/‖g_p‖).

    tf.keras' ``clipnorm`` (``tf.clip_by_norm`` per variable), as opposed to its
    ``global_clipnorm``, which is ``norm`` here.
    """
    for p in params:
        p.grad.mul_(torch.clamp(max_norm / torch.linalg.vector_norm(p.grad), max=1.0))


def clip_autoclip(params, norm, state, percentile: float) -> None:
    """AutoClip (Seetharaman et al. 2020, arXiv:2007.14469): threshold = the p-th percentile of
    every global norm seen so far, the current one included; g ← g·min(1, threshold/‖g‖).

    As the paper's code (pseeth/autoclip, ``autoclip.py``): the norm is appended to the
    history *before* the percentile is taken (numpy's linear interpolation). A non-finite
    norm is neither clipped nor remembered: that update is dropped by the training loop,
    and one NaN in the history would make every later threshold NaN.
    """
    g = float(norm)
    if not math.isfinite(g):
        return
    history = state.setdefault("history", [])
    history.append(g)
    threshold = float(np.percentile(history, percentile))
    if g > threshold:
        for p in params:
            p.grad.mul_(threshold / g)


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x_i‖ per output unit i, broadcastable to x: rows of a (out, in) weight; a vector
    (bias) or scalar counts as one unit (Brock et al. 2021; deepmind-research
    ``nfnets/agc_optax.py``, ``unitwise_norm``)."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True)


def clip_agc(params, norm, state, clipping: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock, De, Smith & Simonyan 2021, arXiv:2102.06171, §4.1):
    for every unit i, if ‖G_i‖ > λ·max(‖W_i‖, 1e-3) then G_i ← λ·max(‖W_i‖, 1e-3)·G_i/‖G_i‖.

    torch stores a weight as (out, in), so a unit is a row (the reference code, in JAX's
    (in, out) layout, reduces over axis 0). The paper does not clip the final linear layer;
    neither does gradlab (``clips_readout=False``: the Clipper does not pass the readout).
    """
    for p in params:
        g_norm, max_norm = unitwise_norm(p.grad), clipping * unitwise_norm(p.detach()).clamp_min(eps)
        # the 1e-6 only guards the division, as in the reference code's my_clip
        p.grad.mul_(torch.where(g_norm > max_norm, max_norm / g_norm.clamp_min(1e-6), 1.0))


def clip_zclip(params, norm, state, alpha: float, z_thresh: float, warmup: int) -> None:
    """ZClip (Kumar, Owen, Roy Chowdhury & Güra 2025, arXiv:2504.02507), the default mode of
    the paper's code (bluorion-com/ZClip, ``mode="zscore"``, ``clip_option="adaptive_scaling"``).

    Warm-up: the first ``warmup`` norms are collected unclipped, then μ and σ² start
    as their mean and (population) variance. After it, z = (‖g‖ − μ)/(σ + 1e-6); when
    z > z_thresh the norm is clipped to the reciprocal threshold μ + z_thresh·σ/(z/z_thresh).
    The statistics then follow the norm *after* clipping: μ ← αμ + (1−α)‖g‖ and
    σ² ← ασ² + (1−α)(‖g‖ − μ)², the latter with the updated μ, as the code does.
    Without the code's optional cap ``max_grad_norm`` (its README's default: none).
    A non-finite norm leaves the statistics untouched (the update is dropped).
    """
    g = float(norm)
    if not math.isfinite(g):
        return
    if "mean" not in state:
        buffer = state.setdefault("warmup", [])
        buffer.append(g)
        if len(buffer) >= warmup:
            state["mean"] = sum(buffer) / len(buffer)
            state["var"] = sum((x - state["mean"]) ** 2 for x in buffer) / len(buffer)
            del state["warmup"]
        return
    mean, std = state["mean"], math.sqrt(state["var"])
    z = (g - mean) / (std + 1e-6)
    if z > z_thresh:
        threshold = mean + z_thresh * std / (z / z_thresh)  # below ‖g‖ whenever z > z_thresh
        for p in params:
            p.grad.mul_(threshold / g)
        g = threshold
    state["mean"] = alpha * mean + (1 - alpha) * g
    state["var"] = alpha * state["var"] + (1 - alpha) * (g - state["mean"]) ** 2


class RecurrentClip:
    """A ``grad_transform(t, g)`` that clips ∂L/∂h_t (B, H) at every step of the backward pass,
    before it flows into step t's weights and on to h_{t-1}.

    ``value``: g ← clamp(g, −c, c), element-wise (Mikolov 2012, thesis §3.2.2; Lasagne's
    ``grad_clipping``). ``norm``: each sample's g ← g·min(1, c/‖g‖). It notes whether any
    step was clipped (a 0-d bool tensor, no device sync per step), so a run's clip rate counts
    the updates this rule changed; ``engaged`` reads and resets it once per update.
    """

    def __init__(self, threshold: float, mode: str):
        self.threshold, self.mode = threshold, mode
        self.hit: torch.Tensor | None = None

    def __call__(self, t, g: torch.Tensor) -> torch.Tensor:
        c = self.threshold
        if self.mode == "value":
            hit, out = (g.abs() > c).any(), g.clamp(-c, c)
        else:
            scale = (c / torch.linalg.vector_norm(g, dim=-1, keepdim=True)).clamp(max=1.0)
            hit, out = (scale < 1).any(), g * scale
        self.hit = hit if self.hit is None else self.hit | hit
        return out

    def engaged(self) -> bool:
        hit, self.hit = self.hit, None
        return bool(hit) if hit is not None else False


MAX_NORM = Param(1.0, checks.positive_number)
CLIPS: dict[str, ClipRule] = {
    "none": ClipRule({}, "no clipping", addresses=frozenset()),
    "norm": ClipRule({"max_norm": MAX_NORM},
                     "rescale the global gradient norm to at most max_norm (Pascanu et al. 2013, Alg. 1)", clip_norm),
    "value": ClipRule({"clip_value": Param(0.5, checks.positive_number)},
                      "clamp every gradient element to [-clip_value, clip_value] (Mikolov 2012)", clip_value),
    "param_norm": ClipRule({"max_norm": MAX_NORM},
                           "rescale each parameter's gradient to norm <= max_norm (Keras clipnorm, Chollet 2015)",
                           clip_param_norm),
    "autoclip": ClipRule({"percentile": Param(10.0, checks.percentile)},
                         "clip the global norm to the percentile of all norms so far (Seetharaman et al. 2020)",
                         clip_autoclip),
    "agc": ClipRule({"clipping": Param(0.01, checks.positive_number)},  # λ
                    "unit-wise: ‖G_i‖ <= clipping·max(‖W_i‖, 1e-3), readout not clipped (Brock et al. 2021)",
                    clip_agc, clips_readout=False),
    "zclip": ClipRule({"alpha": Param(0.97, checks.fraction),  # the EMA's factor
                       "z_thresh": Param(2.5, checks.positive_number),
                       # the statistics need one norm (the code treats 0 as 1)
                       "warmup": Param(25, checks.int_at_least(1))},
                      "clip norm spikes by their z-score against an EMA of the norm (Kumar et al. 2025)", clip_zclip),
    "recurrent": ClipRule({"threshold": Param(1.0, checks.positive_number),
                           "mode": Param("value", checks.choice({"value": 0, "norm": 0}, "recurrent clip mode"))},
                          "clip ∂L/∂h_t at every backward step: element-wise or per-sample norm (Mikolov 2012)",
                          in_backward=RecurrentClip),
}


def resolve_clip(v) -> dict:
    """``none`` | ``norm`` | ``{kind: norm, max_norm: 2}`` -> ``{"kind": "norm", "max_norm": 2.0}``.

    Every parameter is checked by its rule's own check; a ValueError lists each problem on its own line.
    """
    if isinstance(v, str):
        v = {"kind": v}
    if not isinstance(v, dict):
        raise ValueError(f"expected a clip kind or a mapping with 'kind', got {v!r}")
    kind = v.get("kind")
    if kind not in CLIPS:
        raise ValueError(f"unknown clip kind {kind!r}{did_you_mean(kind, CLIPS)}; valid: {', '.join(CLIPS)}")
    rule = CLIPS[kind]
    resolved, problems = {"kind": kind}, []
    for k in v:
        if k != "kind" and k not in rule.params:
            valid = ", ".join(rule.params) or "none"
            problems.append(f"clip {kind!r} has no parameter {k!r}{did_you_mean(k, rule.params)}; "
                            f"valid: {valid}")
    for k, param in rule.params.items():
        val = v.get(k, param.default)
        msg = param.check(val)
        if msg:
            problems.append(f"clip {kind}.{k}: {msg}")
        else:  # 1 -> 1.0 where the parameter is a float, so equal specs resolve (and hash) alike
            resolved[k] = float(val) if isinstance(param.default, float) else val
    if problems:
        raise ValueError("\n".join(problems))
    return resolved


@dataclass
class Clipper:
    """One run's clipping rule: its resolved parameters and the state it keeps across steps.

    Build one per run (``make_clipper``) and call it after every backward pass.
    """

    spec: dict                                      # resolved: {"kind": ..., **parameters}
    readout: frozenset = frozenset()                # ids of the readout's parameters
    state: dict = field(default_factory=dict)       # AutoClip's history, ZClip's statistics

    @property
    def rule(self) -> ClipRule:
        return CLIPS[self.spec["kind"]]

    @property
    def settings(self) -> dict:
        """The rule's parameters, resolved: the spec without its kind."""
        return {k: v for k, v in self.spec.items() if k != "kind"}

    @property
    def grad_transform(self) -> Callable | None:
        """What the forward pass hands the engine: a fresh per-step clip of ∂L/∂h_t for a rule that acts
        inside backward, else None."""
        return self.rule.in_backward(**self.settings) if self.rule.in_backward else None

    def __call__(self, parameters) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip in place; return (pre-clip global norm, post-clip global norm), 0-d tensors.

        A rule with no stage after backward (``none``; ``recurrent``, which clipped during it)
        leaves the gradient as backward produced it: both norms are its norm.
        """
        params = [p for p in parameters if p.grad is not None]
        grads = [p.grad for p in params]
        norm = global_norm(grads)
        rule = self.rule
        if rule.after_backward is None:
            return norm, norm
        targets = params if rule.clips_readout else [p for p in params if id(p) not in self.readout]
        rule.after_backward(targets, norm, self.state, **self.settings)
        return norm, global_norm(grads)


def make_clipper(clip: dict, model=None) -> Clipper:
    """A run's clipper for the resolved spec ``clip``; ``model`` names the readout AGC leaves alone."""
    readout = frozenset(id(p) for p in model.readout.parameters()) if model is not None else frozenset()
    return Clipper(dict(clip), readout)


def clip_gradients(parameters, clip) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the gradients of ``parameters`` in place by ``clip``: a ``Clipper`` (keeps its
    state), or a resolved spec dict (a fresh clipper: no history, no readout exemption).

    Returns (pre-clip global norm, post-clip global norm), both 0-d tensors,
    so the caller records the norm before clipping every step.
    """
    clipper = clip if isinstance(clip, Clipper) else make_clipper(clip)
    return clipper(parameters)


# ---------------------------------------------------------------------------
# Pascanu's Ω regulariser

OMEGA_BOUND = 1e-20  # steps with ‖δ_t‖² below this are left out (Pascanu's code: state['bound'])


@dataclass
class HiddenGradients:
    """A ``grad_transform`` that keeps a detached copy of every ∂L/∂h_t of a backward pass.

    ``inner`` (e.g. the recurrent clip) runs first: the copy is the gradient that
    flows on. ``pop(hs)`` returns them stacked like hs, (k, B, H), and forgets them.
    """

    inner: Callable | None = None
    grads: dict = field(default_factory=dict)

    def __call__(self, t, g):
        if self.inner is not None:
            g = self.inner(t, g)
        self.grads[t] = g.detach().clone()
        return g

    def pop(self, hs: torch.Tensor) -> torch.Tensor:
        deltas = torch.zeros_like(hs)  # a step backward never reached has δ = 0: masked out
        for t, g in self.grads.items():
            deltas[t] = g
        self.grads = {}
        return deltas


def omega(hs: torch.Tensor, deltas: torch.Tensor, weight_hh: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063) §3.3, eq. 9, in the form of their code
    (pascanur/trainingRNNs, ``RNN.py``), for h_t = act(W x_t + U h_{t-1} + b):

        Ω = mean over (t, b) with ‖δ_t‖² ≥ 1e-20 of ( ‖δ_t ∂h_t/∂h_{t-1}‖² / ‖δ_t‖² − 1 )²

    with δ_t = ∂L/∂h_t (B, H) the total gradient w.r.t. the hidden state, per sample,
    and δ_t ∂h_t/∂h_{t-1} = (δ_t ⊙ act'(a_t)) U. As in the code, the norms are squared
    (the paper writes the ratio of plain norms; both vanish at ratio 1) and the sum over
    t and b is divided by the number of unmasked terms. Only the direct dependence on U
    is differentiable: pass hs (k, B, H) and deltas (k, B, H) detached.
    """
    act_grad = 1 - hs * hs if nonlinearity == "tanh" else (hs > 0).to(hs.dtype)  # act'(a_t) from h_t
    den = deltas.square().sum(-1)  # (k, B) ‖δ_t‖²
    mask = den >= OMEGA_BOUND
    d = torch.where(mask[..., None], deltas, 0.0) * act_grad  # masked steps: 0, so no NaN reaches U's gradient
    num = (d @ weight_hh).square().sum(-1)  # (k, B) ‖δ_t ∂h_t/∂h_{t-1}‖²
    ratio = torch.where(mask, num / torch.where(mask, den, 1.0), 1.0)
    return (ratio - 1).square().sum() / mask.sum().clamp_min(1)


# ---------------------------------------------------------------------------
# Weight decay

def decay_groups(model, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: L2 weight decay λ on the recurrent and input weight
    matrices (every ``weight_*`` outside the readout), none on biases and the readout,
    nor on a U kept orthogonal (``constrain``): its norm is fixed, and decaying the
    parametrization's free matrix would pull U somewhere arbitrary instead.

    torch's SGD/Adam/RMSprop ``weight_decay`` adds λ·W to W's gradient before the
    update: the gradient of (λ/2)‖W‖² (coupled L2, not AdamW's decoupled decay),
    after clipping, so the decay is never clipped away and the recorded norms are
    those of the loss alone.

    Source: Krogh & Hertz 1992, "A simple weight decay can improve generalization"
    (the penalty (λ/2)‖w‖² and its update w ← w − η(∂L/∂w + λw)); as a remedy for
    exploding gradients it keeps the recurrent matrix small: Pascanu et al. 2013
    (section 2.1) show that a largest singular value of W below 1/γ (γ bounding the
    nonlinearity's derivative) is sufficient for the gradient not to explode.
    """
    decayed, rest = [], []
    for name, p in model.named_parameters():
        parts = name.split(".")
        is_weight = parts[0] != "readout" and "parametrizations" not in parts and any(
            n.startswith("weight") for n in parts)
        (decayed if is_weight else rest).append(p)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
