"""Helpers for tests that step dbspec's optimizers beside hand-built ones on the same tensors."""

from __future__ import annotations

from pathlib import Path

import torch


def step_alike(optimizers: list, params: list[list], n: int = 6) -> None:
    """`n` steps of every optimizer, each over its own copy of the parameters, with one seeded gradient
    stream."""
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        grads = [torch.randn(p.shape, generator=g) for p in params[0]]
        for optimizer, ps in zip(optimizers, params, strict=True):
            for p, grad in zip(ps, grads, strict=True):
                p.grad = grad.clone()
            optimizer.step()


def same(a: list, b: list) -> bool:
    """Whether two lists of tensors are bit-identical."""
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def newest_state(out) -> dict:
    """The training state of the newest checkpoint under an output folder."""
    files = sorted(Path(out).rglob("training_state.pt"), key=lambda p: p.stat().st_mtime)
    assert files, f"no checkpoint under {out}"
    return torch.load(files[-1], weights_only=False)


def flat_tensors(tree, prefix: str = "") -> dict:
    """The tensors of a nested dict (a training state), by their path."""
    if torch.is_tensor(tree):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat_tensors(sub, f"{prefix}/{key}").items()}
    return {}


def same_trained_state(out_a, out_b) -> bool:
    """Whether the newest checkpoints under two output folders hold bit-identical trained tensors."""
    a = flat_tensors(newest_state(out_a)["trainable"])
    b = flat_tensors(newest_state(out_b)["trainable"])
    return bool(a) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
