"""Exponential moving average of the trained weights, for validation and as a second set of outputs.

The decay schedule is diffusers' `EMAModel` (which SimpleTuner copies) with `use_ema_warmup=False`: the n-th
update (n = 1, 2, ...) uses decay_n = min(decay, (1 + s) / (10 + s)) with s = n - 1, and 0 at n = 1 (the
first update copies the weights). Without warm-up every update uses `decay`. With `update_every` k the
schedule counts updates, not optimizer steps, like SimpleTuner's `ema_update_interval`.

Shadow weights are held in fp32 whatever the parameters' dtype: with decay 0.999 an update moves a weight by
0.1% of the gap, which bf16 (8 bits of mantissa) would round away. `offload` keeps them on the CPU: each
update then copies the live weights there first (cheap for LoRA, 4 bytes/param of transfer for full runs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from dbspec.plan.model import EmaPlan

CPU = torch.device("cpu")


class Ema:
    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        *,
        decay: float,
        warmup: bool,
        offload: bool,
        update_every: int = 1,
    ):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        if update_every < 1:
            raise ValueError(f"EMA update_every must be >= 1, got {update_every}")
        self.parameters = list(parameters)
        self.decay, self.warmup, self.offload, self.update_every = decay, warmup, offload, update_every
        self.updates = 0  # updates done so far: the decay schedule's clock
        self.shadow = [
            p.detach().to(CPU if offload else p.device, torch.float32, copy=True) for p in self.parameters
        ]

    @classmethod
    def from_plan(cls, plan: EmaPlan, parameters: Iterable[torch.nn.Parameter]) -> Ema:
        return cls(
            parameters,
            decay=plan.decay,
            warmup=plan.warmup,
            offload=plan.offload,
            update_every=plan.update_every,
        )

    def decay_for_update(self, n: int) -> float:
        """Decay used by the n-th update (1-based)."""
        if not self.warmup:
            return self.decay
        s = n - 1
        return 0.0 if s <= 0 else min(self.decay, (1 + s) / (10 + s))

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Call after every optimizer step with the steps done so far; averages every `update_every`-th."""
        if step % self.update_every:
            return False
        self.updates += 1
        weight = 1.0 - self.decay_for_update(self.updates)
        live = [p.detach().to(s.device, torch.float32) for p, s in zip(self.parameters, self.shadow)]
        torch._foreach_lerp_(self.shadow, live, weight)  # shadow += (1 - decay) * (live - shadow)
        return True

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Write the averaged weights into `parameters` (same order and shapes as tracked)."""
        targets = list(parameters)
        self._check_matches(targets, "parameters")
        for target, shadow in zip(targets, self.shadow):
            target.copy_(shadow)  # copy_ casts dtype and moves device

    @contextlib.contextmanager
    def swap(self) -> Iterator[None]:
        """Inside the block the tracked parameters hold the EMA weights; afterwards exactly what they held."""
        with torch.no_grad():
            stash = [p.detach().to(CPU if self.offload else p.device, copy=True) for p in self.parameters]
            self.copy_to(self.parameters)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, saved in zip(self.parameters, stash):
                    p.copy_(saved)  # same dtype: bit-exact

    def state_dict(self) -> dict:
        """Plain values and CPU tensors (loadable with torch.load(weights_only=True)); copies, not views."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "update_every": self.update_every,
            "updates": self.updates,
            "shadow": [s.detach().to(CPU, copy=True) for s in self.shadow],
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore shadows and the schedule's clock; settings stay those this Ema was built
        with (the plan's)."""
        shadow = state["shadow"]
        self._check_matches(shadow, "checkpoint EMA weights")
        for mine, saved in zip(self.shadow, shadow):
            mine.copy_(saved)
        self.updates = int(state["updates"])

    def _check_matches(self, tensors: list, what: str) -> None:
        if len(tensors) != len(self.shadow):
            raise ValueError(f"{what}: {len(tensors)} tensors, but the EMA tracks {len(self.shadow)}")
        for i, (t, s) in enumerate(zip(tensors, self.shadow)):
            if t.shape != s.shape:
                raise ValueError(f"{what}: tensor {i} has shape {tuple(t.shape)}, the EMA's {tuple(s.shape)}")
