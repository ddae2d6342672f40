"""Gradients that add up across steps outside the optimizer (kohya's LoRA-FA frozen downs, train.text_encoder
_idle's encoders): nothing clears them, the clip counts them, so every checkpoint keeps them and a resume puts
them back, and the resumed run clips as the uninterrupted one."""

from __future__ import annotations

import torch


def saved_grads(named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor] | None:
    """The parameters' gradients so far by name, on the CPU (None without parameters; none before the
    first backward)."""
    if not named:
        return None
    return {k: p.grad.detach().to("cpu", copy=True) for k, p in named.items() if p.grad is not None}


def restore_grads(named: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor] | None) -> None:
    if not named or not saved:
        return
    for key, grad in saved.items():
        param = named[key]
        param.grad = grad.to(param.device, param.dtype)
