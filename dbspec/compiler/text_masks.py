"""The text attention masks of the families with T5 and CLIP hidden states (kohya's `--apply_t5_attn_mask`,
`--apply_lg_attn_mask`): which families have the encoder each option masks (DBS530-DBS532)."""

from __future__ import annotations

from dbspec.compiler.context import Context
from dbspec.families import family_spec
from dbspec.plan.model import ModelPlan


def has_t5(family: str) -> bool:
    return any(e.tokenizer_class.startswith("T5") for e in family_spec(family).text_encoders)


def check_text_masks(ctx: Context, model: ModelPlan | None) -> None:
    """model.t5_attention_mask without T5 (DBS530); model.clip_attention_mask outside SD3: refused where
    dbspec does not mask CLIP (DBS531), inert on Flux, which reads only CLIP's pooled output (DBS532)."""
    if model is None:
        return
    spec = family_spec(model.family)
    if model.t5_attention_mask and not has_t5(model.family):
        ctx.report(
            "DBS530",
            "error",
            f"model.t5_attention_mask is true, but {spec.title} models have no T5 text encoder",
            ("model", "t5_attention_mask"),
            help="remove model.t5_attention_mask (it is for SD3 and Flux)",
        )
    if not model.clip_attention_mask or spec.clip_attention_mask == "hidden":
        return
    if spec.clip_attention_mask == "pooled":
        ctx.report(
            "DBS532",
            "warning",
            f"model.clip_attention_mask has no effect on {spec.title}: it reads only CLIP's pooled output, "
            "which CLIP's causal attention computes before any padding",
            ("model", "clip_attention_mask"),
            help="remove model.clip_attention_mask",
        )
        return
    ctx.report(
        "DBS531",
        "error",
        "model.clip_attention_mask is true, but dbspec masks CLIP's padding only where its hidden states "
        f"condition the denoiser (SD3, kohya's --apply_lg_attn_mask), not for {spec.title} models",
        ("model", "clip_attention_mask"),
        help="remove model.clip_attention_mask",
    )
