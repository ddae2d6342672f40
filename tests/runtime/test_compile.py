"""precision.compile: the tiny SD1 model trained compiled and eager, same work, compared.

The compiler refuses precision.compile for a CPU target (DBS336: inductor's CPU backward of the UNet is
wrong with torch 2.13, the last test shows it), so these tests give the runtime a CPU plan with `compile`
set, as a GPU plan would have it: the runtime takes the Plan and nothing else.

The wiring test compiles with the "aot_eager" backend: TorchDynamo traces the modules and AOTAutograd builds
their forward and backward graphs as inductor gets them, but runs them with ATen's own kernels, so it costs
seconds and no C++ build, and its numbers are eager's. The inductor test builds C++ kernels (2 to 20 minutes
cold on two shared cores; inductor's disk cache makes reruns about a minute): too slow for the suite's
15-minute budget on a fresh CI machine, so it runs when DBSPEC_INDUCTOR_CHECK=1 is set (after a torch
upgrade: when it passes, lift DBS336). `tests/bench/bench_compile.py --what compile_grads` shows the same.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import attrs
import pytest
import torch
from safetensors.torch import load_file

from dbspec.plan.model import CompilePlan
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec

# Square buckets, 6 images x 2 repeats in batches of 2: one input shape, so one compile per module.
SQUARE = ["buckets.mode=square"]
CHECKPOINTS = "[checkpoints]\nevery = 2\n"


def _weights(final: Path) -> dict:
    files = sorted(final.rglob("*.safetensors"))
    return {f"{f.relative_to(final)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def _compiled(plan, backend: str):
    trained = tuple(c.name for c in plan.precision.components if c.trainable != "frozen")
    compiled = CompilePlan(components=trained, backend=backend)
    return attrs.evolve(plan, precision=attrs.evolve(plan.precision, compile=compiled))


def test_the_cpu_plan_refuses_compile(tmp_path):
    from dbspec.frontend import plan_spec
    from tests.runtime.runspec import CPU

    spec = write_spec(tmp_path, steps=1, extra="[precision]\ncompile = true\n")
    planned = plan_spec(spec, CPU, str(spec), [])
    assert planned.plan is None and [d.code for d in planned.diagnostics if d.severity == "error"] == [
        "DBS336"
    ]


def test_compiled_modules_keep_their_names_train_like_eager_and_resume(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=CHECKPOINTS + "[train]\ntext_encoder = true\n")
    eager = execute(compile_spec(spec, [*SQUARE, "output.dir=eager"]))
    plan = _compiled(compile_spec(spec, [*SQUARE, "output.dir=whole"]), "aot_eager")
    assert plan.precision.compile.components == ("unet", "text_encoder")
    whole = execute(plan, keep_models=True)
    unet, (encoder,) = whole.components.unet, whole.components.text_encoders
    assert unet._compiled_call_impl is not None and encoder._compiled_call_impl is not None
    # aot_eager runs the same ATen kernels, in a traced order: equal within float rounding.
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(whole.losses, eager.losses, strict=True))
    exported, plain = _weights(Path(whole.final)), _weights(Path(eager.final))
    assert exported.keys() == plain.keys() and not any("_orig_mod" in k for k in exported)
    for key in exported:
        torch.testing.assert_close(exported[key], plain[key], rtol=1e-4, atol=1e-6)

    parts = _compiled(compile_spec(spec, [*SQUARE, "output.dir=parts"]), "aot_eager")
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted" and first.last_checkpoint
    second = execute(parts, resume=True)
    assert first.losses + second.losses == whole.losses  # the same compiled run, resumed: bit-exact
    resumed = _weights(Path(second.final))
    assert all(torch.equal(resumed[k], exported[k]) for k in exported)


# SGD, not AdamW: Adam's first update is lr x sign(gradient) per element, which would amplify rounding
# differences; SGD's update is proportional to the gradient, so the losses compare the gradients themselves.
SGD = ['optimizer.kind="sgd"', "optimizer.lr=0.05"]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DBSPEC_INDUCTOR_CHECK") != "1",
    reason="C++ kernel build, minutes: DBSPEC_INDUCTOR_CHECK=1",
)
@pytest.mark.xfail(
    strict=True,
    reason="torch 2.13 CPU inductor: wrong UNet gradients (DBS336); when this passes, lift DBS336",
)
def test_inductor_on_the_cpu_trains_like_eager(tmp_path):
    """Inductor reorders float work, so equal within 1e-4 relative over three SGD steps would be right.
    Measured instead: step 1's loss equal to eager's to the last bit, steps 2 and 3 off by 0.5% and 1%,
    because 84 of the 208 parameters (big convolution weights) get an all-zero gradient, fresh cache too."""
    spec = write_spec(tmp_path, steps=3)
    eager = execute(compile_spec(spec, [*SGD, *SQUARE, "output.dir=eager"]))
    compiled = execute(
        _compiled(compile_spec(spec, [*SGD, *SQUARE, "output.dir=compiled"]), "inductor"), keep_models=True
    )
    assert compiled.components.unet._compiled_call_impl is not None
    assert len(set(eager.losses)) == 3  # the weights moved: each step's loss differs
    exported, plain = _weights(Path(compiled.final)), _weights(Path(eager.final))
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in plain.items()}
    for a, b in zip(compiled.losses, eager.losses, strict=True):
        assert math.isclose(a, b, rel_tol=1e-4), (compiled.losses, eager.losses)
