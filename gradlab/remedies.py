"""Remedies for exploding gradients that act between ``backward()`` and the optimizer step.

A clipping rule is a plain registry entry: its parameters with their defaults,
and a function that clips the gradients of a list of parameters in place.
Truncated BPTT, the other remedy of this release, lives in the training loop
(it decides where the backward pass stops), not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClipRule:
    params: dict           # parameter name -> default value
    apply: Callable        # (grads: list[Tensor], norm: Tensor, **params) -> None, in place
    description: str


def global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """‖g‖₂ over all parameters together (Pascanu et al. 2013, Algorithm 1), as a 0-d tensor."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def clip_none(grads, norm) -> None:
    return None


def clip_norm(grads, norm, max_norm: float) -> None:
    """Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063), Algorithm 1: if ‖g‖ ≥ c then g ← c·g/‖g‖."""
    scale = torch.clamp(max_norm / norm, max=1.0)  # stays on device: no host sync per step
    for g in grads:
        g.mul_(scale)


def clip_value(grads, norm, clip_value: float) -> None:
    """Element-wise clipping g_i ← clamp(g_i, −c, c) (Mikolov 2012, thesis §3.2.2)."""
    for g in grads:
        g.clamp_(-clip_value, clip_value)


CLIPS: dict[str, ClipRule] = {
    "none": ClipRule({}, clip_none, "no clipping"),
    "norm": ClipRule({"max_norm": 1.0}, clip_norm,
                     "rescale the global gradient norm to at most max_norm (Pascanu et al. 2013, Alg. 1)"),
    "value": ClipRule({"clip_value": 0.5}, clip_value,
                      "clamp every gradient element to [-clip_value, clip_value] (Mikolov 2012)"),
}


def clip_gradients(parameters, clip: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the gradients of ``parameters`` in place by the resolved rule ``clip``.

    Returns (pre-clip global norm, post-clip global norm), both 0-d tensors,
    so the caller records the norm before clipping every step.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = global_norm(grads)
    rule = CLIPS[clip["kind"]]
    rule.apply(grads, norm, **{k: v for k, v in clip.items() if k != "kind"})
    after = norm if clip["kind"] == "none" else global_norm(grads)
    return norm, after
