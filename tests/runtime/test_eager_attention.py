"""precision.attention = "eager" per family: Flux's processors dispatch, so eager is diffusers' "_native_math"
backend (torch's reference attention) instead of AttnProcessor, which FluxAttention cannot run; SD3's joint
processors have no plain counterpart (DBS547)."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor

from dbspec.families import family_spec
from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.models import set_attention
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, final_weights, make_plan, write_spec
from dbspec.frontend import plan_spec
from tests.runtime.runspec import CPU

FLUX = "builtin:tiny-flux"


def _predict(transformer, mask: bool = False):
    family = family_runtime("flux")
    noisy = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    text = {"prompt_embeds": torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(1))}
    text["pooled"] = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return family.predict(
            transformer, noisy, torch.tensor([700.0, 20.0]), text, family.conditioning(text, [], "cpu")
        )


def test_flux_eager_is_the_reference_attention():
    transformer = build_pipeline(FLUX).transformer
    sdpa = _predict(transformer)
    set_attention(transformer, "eager", "flux")
    backends = {p._attention_backend for p in transformer.attn_processors.values()}
    assert backends == {family_spec("flux").eager_attention_backend}
    torch.testing.assert_close(_predict(transformer), sdpa, rtol=0, atol=1e-5)


def test_flux_rejects_the_unet_processor():
    """What "eager" set before: FluxAttention has no spatial_norm for AttnProcessor."""
    transformer = build_pipeline(FLUX).transformer
    transformer.set_attn_processor(AttnProcessor())
    try:
        _predict(transformer)
    except AttributeError as exc:
        assert "spatial_norm" in str(exc)
    else:
        raise AssertionError("AttnProcessor ran on FluxAttention")


def test_flux_lora_trains_with_eager_attention(tmp_path):
    plan = make_plan(
        tmp_path,
        base=FLUX,
        steps=2,
        extra='[adapter]\nkind = "lora"\nrank = 4\n\n[precision]\nattention = "eager"\n',
    )
    assert plan.precision.attention == "eager"
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    backends = {p._attention_backend for p in result.components.unet.attn_processors.values()}
    assert backends == {"_native_math"}


def test_flux_eager_with_the_t5_mask_trains_as_sdpa_does(tmp_path):
    """model.t5_attention_mask: Flux's processors pass the padded-key mask to the dispatcher, which the
    reference attention takes as SDPA does: the same trained LoRA within float tolerance."""
    finals = {}
    for kind in ("sdpa", "eager"):
        extra = f'[adapter]\nkind = "lora"\nrank = 4\n\n[precision]\nattention = "{kind}"\n'
        path = write_spec(tmp_path / kind, base=FLUX, steps=2, extra=extra)
        plan = compile_spec(path, ["model.t5_attention_mask=true"])
        assert plan.model.t5_attention_mask
        result = execute(plan)
        assert result.status == "finished"
        finals[kind] = final_weights(result.final)
    assert finals["sdpa"].keys() == finals["eager"].keys()
    for key, value in finals["sdpa"].items():
        torch.testing.assert_close(finals["eager"][key], value, rtol=1e-3, atol=1e-5)


def test_sd3_eager_is_refused_at_plan_time(tmp_path):
    path = write_spec(tmp_path, base="builtin:tiny-sd3", steps=1, extra='[precision]\nattention = "eager"\n')
    planned = plan_spec(path, CPU, str(path), [])
    assert planned.plan is None
    assert [d.code for d in planned.diagnostics if d.severity == "error"] == ["DBS547"]


def test_a_saved_sd3_plan_with_eager_attention_is_a_plan_problem(tmp_path):
    """plan.validate checks a plan read from disk as DBS547 checks specs."""
    import attrs

    from dbspec.plan.validate import plan_problems

    plan = make_plan(tmp_path, base="builtin:tiny-sd3", steps=1)
    assert not plan_problems(plan)
    eager = attrs.evolve(plan, precision=attrs.evolve(plan.precision, attention="eager"))
    assert any('precision.attention = "eager"' in p for p in plan_problems(eager))
