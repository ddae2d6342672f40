"""Helpers for tests that step dbspec's optimizers beside hand-built ones on the same tensors."""

from __future__ import annotations

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
