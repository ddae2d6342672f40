"""`dbspec plan` names the denoiser of the flow families "transformer" (SD3, Flux) and keeps "unet" for the
UNet families; the plan's own field names stay "unet" (display only)."""

from __future__ import annotations

import io

import pytest
from hubspecs import empty_hub_cache, plan_hub_spec  # noqa: F401 (a pytest fixture)
from rich.console import Console

from dbspec.plan.summary import model_table, training_table

LORA = '[adapter]\nkind = "lora"\nrank = 4\n'


def _text(*tables) -> str:
    out = io.StringIO()
    console = Console(file=out, width=250, color_system=None)
    for table in tables:
        console.print(table)
    return out.getvalue()


@pytest.mark.parametrize(
    ("base", "shown"),
    [
        ("black-forest-labs/FLUX.1-dev", "transformer"),
        ("stabilityai/stable-diffusion-3.5-medium", "transformer"),
        ("stabilityai/stable-diffusion-xl-base-1.0", "unet"),
    ],
)
def test_the_summary_names_the_denoiser_by_family(tmp_path, base: str, shown: str):
    plan = plan_hub_spec(tmp_path, LORA, base).plan
    assert plan is not None and "unet" in plan.model.params and "unet" in plan.adapter.params
    assert f"{shown} " in _text(model_table(plan))  # the model row's parameter counts
    text = _text(model_table(plan), training_table(plan))
    assert f"  {shown} params" in text and f"  {shown} " in text  # adapter counts, component precision
    other = "unet" if shown == "transformer" else "transformer"
    assert other not in text
