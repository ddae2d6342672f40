"""torch.compile of the trained networks, as `plan.precision.compile` says (docs/performance.md).

`nn.Module.compile()` compiles the module's call in place: parameters, buffers and `state_dict()` keys stay
the plain module's (no `_orig_mod.` prefix, as `torch.compile(module)` would add), so checkpoints, resume,
EMA and every export see the same module as in an eager run. Only training steps run compiled: validation,
evaluation and class-image generation call the networks in other modes (no grad, eval, other batch sizes)
and would each cost a recompile for a handful of calls, so they run eager (`eager()`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from dbspec.families import family_spec
from dbspec.plan.model import Plan
from dbspec.runtime.models import Components


def compile_models(plan: Plan, comps: Components) -> tuple[str, ...]:
    """Compile the modules the plan names (lazily: the first call compiles); return their names."""
    c = plan.precision.compile
    if c is None:
        return ()
    names = family_spec(plan.model.family).text_encoder_names
    modules = {"unet": comps.unet, **dict(zip(names, comps.text_encoders))}
    for name in c.components:
        modules[name].compile(
            backend=c.backend, mode=None if c.mode == "default" else c.mode, dynamic=c.dynamic
        )
    return c.components


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly inside (validation, evaluation): no compile for a few calls."""
    with torch.compiler.set_stance("force_eager"):
        yield
