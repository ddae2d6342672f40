"""Every recipe in specs/ trains as its tiny-model twin: the recipe file itself, with only the model, sizes,
step counts and paths overridden (--set), so a twin can never drift from its recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbspec.runtime.execute import execute
from tests.runtime.runspec import CPU, ROOT, compile_spec

pytestmark = pytest.mark.slow

TINY = {
    "sd1": "builtin:tiny-sd1",
    "sd2": "builtin:tiny-sd2",
    "sdxl": "builtin:tiny-sdxl",
    "sdxl_refiner": "builtin:tiny-sdxl-refiner",
    "sd3": "builtin:tiny-sd3",
    "flux": "builtin:tiny-flux",
    "chroma": "builtin:tiny-chroma",
}
# int8 quantisation (torchao) of the tiny twins' text encoders and transformer runs on the CPU as well
RECIPES = {
    "sd15-subject-lora.toml": ("sd1", []),
    "sd15-face-full-prior.toml": (
        "sd1",
        ['optimizer.kind="adamw"', "datasets[1].generate=2", "datasets[1].resolution=64"],
    ),  # adamw8bit needs CUDA
    "sd21-v-full.toml": ("sd2", []),
    "sdxl-lora-int8.toml": ("sdxl", ['model.vae=""']),  # the fp16-fixed VAE is a hub download
    "sdxl-pivotal-lora.toml": ("sdxl", ["pivotal.stop_step=2"]),
    "sdxl-refiner-lora.toml": ("sdxl_refiner", ["validation.steps=4"]),  # int(4 x 0.3): one img2img step
    "flux-dev-lora-int8.toml": ("flux", []),
    "chroma-lora-int8.toml": ("chroma", []),
    "sd35-medium-lora.toml": ("sd3", []),
}


def twin_overrides(family: str, tmp: Path) -> list[str]:
    return [
        f'model.base="{TINY[family]}"',
        'model.prediction="auto"',
        "datasets[0].resolution=64",
        "buckets.step=16",
        "schedule.steps=3",
        "schedule.warmup_steps=0",
        "validation.every=0",
        "validation.steps=2",
        "checkpoints.every=0",
        f'output.dir="{tmp / "out"}"',
        f'cache.dir="{tmp / "cache"}"',
    ]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_twin_trains(recipe, tmp_path):
    family, extra = RECIPES[recipe]
    overrides = twin_overrides(family, tmp_path) + extra
    if recipe == "sd15-face-full-prior.toml":
        overrides.append(f'datasets[1].path="{tmp_path / "class"}"')  # generated class images go to tmp
    plan = compile_spec(ROOT / "specs" / recipe, overrides, env=CPU)
    assert plan.model.family == family
    result = execute(plan)
    assert result.status == "finished" and result.steps == 3
    assert all(loss == loss and loss > 0 for loss in result.losses)
    final = Path(result.final)
    for name in plan.checkpoints.exports:
        assert (
            final / ("dbspec.safetensors" if name == "single_file" else "dbspec.kohya.safetensors")
        ).exists()
    assert (Path(plan.checkpoints.dir) / "samples" / "step-000003" / "grid.png").exists()
