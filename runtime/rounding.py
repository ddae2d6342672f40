"""bf16 trained weights (precision.weights = "bf16", kohya's full_bf16) kept precise by stochastic rounding.

With the weights themselves in bf16 (8 mantissa bits) an update smaller than half a unit in the last place of
a
weight is lost by round-to-nearest: at lr 1e-6 most updates are. `StochasticRoundingOptimizer` steps the
plan's optimizer one parameter at a time on an fp32 copy of that tensor and its gradient, then rounds the
result
to bf16 *stochastically*: up with probability equal to the distance from the bf16 value below, so the rounded
weight equals the fp32 result in expectation and small updates survive on average. The optimizer state is
created and kept in fp32 (it never sees a bf16 tensor). Only one tensor at a time exists in fp32, so the
memory
is that of bf16 weights and gradients plus the fp32 state.

The rounding noise comes from its own generator, seeded from the run's seed (the same on every process: DDP
replicas must round alike to stay identical), and its state is part of the optimizer's state_dict, so a
resumed run rounds exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

ROUNDING_SEED_OFFSET = 2_000_029  # the rounding generator's seed is the run's seed plus this
GENERATOR_KEY = "stochastic_rounding_generator"


def stochastic_round_to_bf16(value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`value` (fp32) rounded to bf16, up or down at random in proportion to the distance (unbiased).

    bf16 is the top 16 bits of an fp32 bit pattern. Adding a uniform random 16-bit integer to the bit pattern
    and clearing the low 16 bits carries into the kept bits with probability (low bits) / 2^16, which is the
    fraction of the way from the bf16 value below (in magnitude) to the next one; carries into the exponent
    move
    to the next binade correctly, and the sign bit is untouched, so negative values round symmetrically.
    """
    if value.dtype != torch.float32:
        raise TypeError(f"stochastic rounding takes fp32 values, got {value.dtype}")
    bits = value.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, generator=generator, device=bits.device, dtype=torch.int32)
    kept = (bits + noise) & -65536  # -65536 = 0xFFFF0000 as int32: the bf16 part of the pattern
    return kept.view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero


class StochasticRoundingOptimizer(torch.optim.Optimizer):
    """The plan's optimizer over bf16 parameters, each update computed in fp32 and rounded stochastically.

    The inner optimizer keeps its param groups, state and defaults (shared, so LR schedulers and accelerate
    see
    them); `step` runs it once per parameter with only that parameter in its group. This is exact for
    optimizers whose update of one parameter reads no other (AdamW, SGD, Adafactor, Lion, 8-bit AdamW); the
    compiler refuses the others (DBS259).
    """

    def __init__(self, inner: torch.optim.Optimizer, generator: torch.Generator) -> None:
        # No super().__init__: the inner optimizer owns the groups and state; these are the same objects.
        self.inner = inner
        self.generator = generator
        self.defaults = inner.defaults
        self.param_groups = inner.param_groups
        self.state = inner.state
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's signature
        if closure is not None:
            raise ValueError("the stochastic-rounding step takes no closure")
        groups = self.inner.param_groups
        saved = list(groups)
        try:
            for group in saved:
                params = group["params"]
                try:
                    for param in params:
                        if param.grad is not None:
                            group["params"] = [param]
                            groups[:] = [group]
                            self._step_one(param)
                finally:
                    group["params"] = params
        finally:
            groups[:] = saved

    def _step_one(self, param: torch.nn.Parameter) -> None:
        held, grad = param.data, param.grad
        if held.dtype != torch.bfloat16:
            self.inner.step()  # not a bf16 weight: nothing to round
            return
        param.grad = None
        param.data = held.float()  # this tensor alone in fp32 while it steps (its state is created fp32)
        param.grad = grad.float()
        self.inner.step()
        held.copy_(stochastic_round_to_bf16(param.data, self.generator))
        param.grad = None
        param.data = held
        param.grad = grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state = self.inner.state_dict()
        state[GENERATOR_KEY] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        generator_state = state_dict.pop(GENERATOR_KEY)
        # torch casts loaded state to each parameter's dtype: present the parameters as fp32 while it loads,
        # so
        # the fp32 moments come back bit-exact instead of rounded to bf16.
        params = [p for group in self.inner.param_groups for p in group["params"]]
        held = [p.data for p in params]
        try:
            for p in params:
                p.data = p.data.float()
            self.inner.load_state_dict(state_dict)
        finally:
            for p, data in zip(params, held, strict=True):
                p.data = data
        self.generator.set_state(generator_state.to(self.generator.get_state().device))

    def __repr__(self) -> str:
        return f"StochasticRoundingOptimizer({self.inner!r})"


def with_stochastic_rounding(
    optimizer: torch.optim.Optimizer, seed: int, device: torch.device
) -> StochasticRoundingOptimizer:
    generator = torch.Generator(device=device).manual_seed(seed + ROUNDING_SEED_OFFSET)
    return StochasticRoundingOptimizer(optimizer, generator)


def load_keeping_state_dtypes(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """Load an optimizer's state as saved, each tensor in the dtype it was saved in.

    Every resume loads this way. With bf16 weights stepped directly (precision.weights_rounding =
    "nearest", kohya's full_bf16) torch's `load_state_dict` casts every floating-point state tensor to its
    parameter's dtype: the fp32 state that Adafactor, CAME or bitsandbytes keep over a bf16 parameter would
    come back rounded to bf16, and the resumed run would drift from the uninterrupted one. The saved tensors
    are put back in their own dtype
    instead.
    """
    optimizer.load_state_dict(state_dict)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, saved in state_dict["state"].items():
        loaded = optimizer.state[params[int(index)]]
        for key, value in saved.items():
            held = loaded.get(key)
            if torch.is_tensor(value) and torch.is_tensor(held) and held.dtype != value.dtype:
                loaded[key] = value.to(device=held.device, copy=True)
