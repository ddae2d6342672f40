"""LoRA-GGPO (adapter.ggpo): kohya implements it in networks.lora_flux alone, so the plan refuses it once the
model's family is resolved to another (DBS396)."""

from __future__ import annotations

from dbspec import codes
from dbspec.compiler.context import Context
from dbspec.families import family_spec
from dbspec.plan.model import AdapterPlan, ModelPlan


def check_ggpo(ctx: Context, model: ModelPlan | None, plan: AdapterPlan) -> None:
    """DBS396: a planned GGPO perturbation on a model whose family's kohya network has none."""
    if model is None or plan.ggpo_sigma is None or family_spec(model.family).kohya.ggpo:
        return
    ctx.report(
        "DBS396",
        "error",
        f"adapter.ggpo = true on a {model.family!r} model: kohya's LoRA-GGPO is networks.lora_flux's "
        "(Flux only)",
        ("adapter", "ggpo"),
        help=codes.help("DBS396"),
    )
