"""Tiny real runs for runtime tests: a spec in tmp_path over copies of the bundled sample images."""

from __future__ import annotations

import io
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dbspec.frontend import plan_spec
from dbspec.plan.model import Plan, TargetEnv

ROOT = Path(__file__).resolve().parents[2]
CPU = TargetEnv(device="cpu", memory_bytes=8 << 30, bf16=True, description="test cpu")

BASE_SPEC = """\
spec_version = 2

[model]
base = "{base}"

[[datasets]]
name = "toy"
path = "data/toy"
prompt = "a photo of ohwx toy"
resolution = 64
repeats = 2
{dataset_extra}

{class_dataset}

[buckets]
step = 16

[optimizer]
lr = 1e-3

[schedule]
steps = {steps}
batch_size = 2

[cache]
dir = "cache"

[output]
dir = "out"

{extra}
"""

TEXT_ENCODER_LORA = """
[adapter]
kind = "lora"
rank = 2

[train]
text_encoder = true
"""
CLASS_DATASET = """\
[[datasets]]
name = "toys"
role = "class"
path = "data/class-toy"
prompt = "a photo of a toy"
resolution = 64
"""


def summary_text(plan: Plan) -> str:
    """`dbspec plan`'s summary as text, wide enough that no row wraps."""
    from rich.console import Console

    from dbspec.plan.summary import render_summary

    console = Console(file=io.StringIO(), width=400)
    render_summary(plan, console)
    return console.file.getvalue()


def final_weights(final: str | Path) -> dict:
    """Every tensor under a run's `final` folder, keyed `<file name>/<tensor name>`."""
    from safetensors.torch import load_file

    return {
        f"{p.name}/{k}": v for p in Path(final).rglob("*.safetensors") for k, v in load_file(str(p)).items()
    }


def write_spec(
    tmp: Path,
    *,
    base: str = "builtin:tiny-sd1",
    steps: int = 4,
    extra: str = "",
    dataset_extra: str = "",
    with_class: bool = False,
) -> Path:
    for name in ("toy", "class-toy"):
        if not (tmp / "data" / name).exists():
            shutil.copytree(ROOT / "specs" / "data" / name, tmp / "data" / name)
    text = BASE_SPEC.format(
        base=base,
        steps=steps,
        extra=extra,
        dataset_extra=dataset_extra,
        class_dataset=CLASS_DATASET if with_class else "",
    )
    path = tmp / "spec.toml"
    path.write_text(text)
    return path


# Runs the tests make write no report.html (a quarter of a tiny run's CPU); test_report.py and
# test_report_browser.py turn it back on, and test it.
NO_REPORT = "logging.report=false"


def compile_spec(
    path: Path, overrides: list[str] | None = None, env: TargetEnv = CPU, report: bool = False
) -> Plan:
    overrides = [*([] if report else [NO_REPORT]), *(overrides or [])]
    planned = plan_spec(path, env, str(path), overrides)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    return planned.plan


def make_plan(tmp: Path, report: bool = False, **kw) -> Plan:
    return compile_spec(write_spec(tmp, **kw), report=report)


@contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """Writes past `nbytes` fail with EFBIG, as on a full disk (Python ignores SIGXFSZ), in
    this process only."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def whole_and_resumed(tmp: Path, **kw):
    """The run of `kw` uninterrupted (its models kept) and stopped after 2 of its steps and resumed: the
    resumed run's losses and trained parameters equal the uninterrupted run's bit for bit. Returns the
    uninterrupted run and its plan."""
    import torch

    from dbspec.runtime.execute import execute

    whole = execute(plan := make_plan(tmp / "whole", **kw), keep_models=True)
    assert whole.status == "finished"
    parts = make_plan(tmp / "parts", **kw)
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    ours = dict(whole.components.unet.float().eval().named_parameters())
    for name, p in second.components.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ours[name]), name
    return plan, whole


def spec_whole_and_resumed(spec: Path, overrides: list[str], tmp: Path, stop: int = 1):
    """`spec` with `overrides` run uninterrupted (its models kept) and stopped after `stop` steps and resumed:
    the resumed run's losses and trained denoiser parameters equal the uninterrupted run's bit for bit.
    Returns the uninterrupted run's plan and result."""
    import torch

    from dbspec.runtime.execute import execute

    plan = compile_spec(spec, [*overrides, f"output.dir={tmp / 'whole'}"])
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    parts = compile_spec(spec, [*overrides, f"output.dir={tmp / 'parts'}"])
    first = execute(parts, stop_after=stop)
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    ours = dict(whole.components.unet.named_parameters())
    for key, p in second.components.unet.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, ours[key]), key
    return plan, whole


def assert_lora_resumes_bit_exact(spec: Path, stop: int = 2):
    """A LoRA run stopped after `stop` steps and resumed gives the uninterrupted run's losses and its
    exported weights bit for bit. Returns the uninterrupted run's result."""
    import torch
    from safetensors.torch import load_file

    from dbspec.runtime.execute import execute

    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=stop)
    resumed = execute(plan, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    return whole
