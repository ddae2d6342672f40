"""Start-up: import the runtime with only the optional libraries the plan uses.

diffusers decides at import time whether to import peft (`diffusers.hooks.layerwise_casting`), bitsandbytes
and torchao (`diffusers.quantizers`) from whether they are *installed*, not whether a run uses them; peft in
turn imports bitsandbytes and torchao. dbspec never loads a model through diffusers' bitsandbytes/torchao
quantizers (it quantises with optimum-quanto, runtime/quantize.py, imported only when a component is
quantised) nor uses layerwise casting, so while the runtime is imported for a plan that needs none of them,
diffusers' availability flags read False for the run (and `diffusers.utils.USE_PEFT_BACKEND`, which every
diffusers model forward reads to import peft and scale LoRA layers, when there is no adapter); they are
restored afterwards. Garbage collection is paused during start-up imports (hundreds of thousands of objects
are allocated and none is garbage) and the survivors are frozen out of later collections (`gc.freeze`), as
CPython's docs advise for long-lived start-up objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from dbspec.plan.model import BNB_OPTIMIZER_KINDS, Plan

# diffusers.utils.import_utils flag -> the library's top-level module
_FLAGS = {
    "peft": "_peft_available",
    "bitsandbytes": "_bitsandbytes_available",
    "torchao": "_torchao_available",
}


def unused_libraries(plan: Plan) -> tuple[str, ...]:
    """The optional libraries a run of `plan` never calls: peft without an adapter, bitsandbytes and torchao
    without a quantised component or an 8-bit optimizer."""
    unused = []
    if plan.adapter.kind == "none" and not plan.adapter.init_weights:
        unused.append("peft")
    quantised = any(c.quantized != "none" for c in plan.precision.components)
    bnb_optimizer = plan.optimizer.kind in BNB_OPTIMIZER_KINDS
    if not quantised and not bnb_optimizer and "peft" in unused:
        unused += ["bitsandbytes", "torchao"]
    return tuple(unused)


@contextmanager
def hidden_libraries(plan: Plan) -> Iterator[None]:
    """Import and run the runtime inside this block: diffusers (and transformers, for torchao) see the
    libraries the plan never calls as not installed (see the module doc)."""
    import diffusers.utils
    import diffusers.utils.import_utils as diffusers_flags
    import transformers.utils as tu
    import transformers.utils.import_utils as tiu

    unused = unused_libraries(plan)
    saved = {
        flag: getattr(diffusers_flags, flag) for flag in _FLAGS.values() if hasattr(diffusers_flags, flag)
    }
    saved_tao = [(m, m.is_torchao_available) for m in (tu, tiu) if hasattr(m, "is_torchao_available")]
    peft_backend = diffusers.utils.USE_PEFT_BACKEND
    if "peft" in unused:  # read at call time by every diffusers model forward (`apply_lora_scale`)
        diffusers.utils.USE_PEFT_BACKEND = False
    for name in unused:
        if _FLAGS[name] in saved:
            setattr(diffusers_flags, _FLAGS[name], False)
    if "torchao" in unused:  # transformers.quantizers imports torchao at import time when it is installed
        for module, _ in saved_tao:
            module.is_torchao_available = _unavailable
    try:
        yield
    finally:
        diffusers.utils.USE_PEFT_BACKEND = peft_backend
        for flag, value in saved.items():
            setattr(diffusers_flags, flag, value)
        for module, fn in saved_tao:
            module.is_torchao_available = fn


def _unavailable(*args, **kwargs) -> bool:
    return False


@contextmanager
def startup_gc() -> Iterator[None]:
    """No collection passes inside the block (the heavy imports); afterwards every object alive is moved out
    of the collector's generations (`gc.freeze`), so later passes skip the libraries' long-lived objects."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
