"""SD2 (v-prediction) and SDXL (two text encoders, micro-conditioning) train through the real loop."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec


def test_sd2_v_prediction_with_zero_terminal_snr(tmp_path):
    spec = write_spec(tmp_path, base="builtin:tiny-sd2", steps=3, extra="[loss]\nzero_terminal_snr = true\n")
    plan = compile_spec(spec)
    assert plan.model.prediction == "v_prediction" and plan.loss.target == "v_prediction"
    result = execute(plan, keep_models=True)
    assert result.status == "finished" and all(loss > 0 for loss in result.losses)
    sched = result.components.noise_scheduler
    assert sched.config.prediction_type == "v_prediction"
    assert float(sched.alphas_cumprod[-1]) < 1e-6  # rescaled to zero terminal SNR


def test_sdxl_lora_trains_both_text_encoders(tmp_path):
    spec = write_spec(
        tmp_path,
        base="builtin:tiny-sdxl",
        steps=2,
        extra="""
[adapter]
kind = "lora"
rank = 2

[train]
text_encoder = true
""",
    )
    plan = compile_spec(spec, ["optimizer.lr=1e-4"])
    assert [c.name for c in plan.precision.components] == ["unet", "text_encoder", "text_encoder_2", "vae"]
    result = execute(plan)
    weights = load_file(str(Path(result.final) / "pytorch_lora_weights.safetensors"))
    prefixes = {k.split(".")[0] for k in weights}
    assert {"unet", "text_encoder", "text_encoder_2"} <= prefixes
    pipe = build_pipeline("builtin:tiny-sdxl")
    pipe.load_lora_weights(result.final)  # diffusers accepts the file


def test_sdxl_full_finetune_uses_cached_pooled_embeddings(tmp_path):
    spec = write_spec(tmp_path, base="builtin:tiny-sdxl", steps=2)
    plan = compile_spec(spec)
    assert plan.cache.text_embeddings and plan.cache.text_misses == 1
    result = execute(plan)
    entries = list((tmp_path / "cache" / "text").rglob("*.safetensors"))
    assert len(entries) == 1 and set(load_file(str(entries[0]))) == {"prompt_embeds", "pooled"}
    base = build_pipeline("builtin:tiny-sdxl").unet.state_dict()
    trained = load_file(str(Path(result.final) / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(trained[k], base[k]) for k in trained)


def test_every_family_has_a_runtime_module_implementing_the_protocol():
    """The registry's `runtime` names a module whose object has every FamilyRuntime member."""
    import inspect

    from dbspec.families import FAMILIES
    from dbspec.runtime.families import FamilyRuntime, family_runtime

    members = {n for n, _ in inspect.getmembers(FamilyRuntime) if not n.startswith("_")}
    members |= set(FamilyRuntime.__annotations__)
    for name, spec in FAMILIES.items():
        runtime = family_runtime(name)
        assert runtime.spec is spec
        missing = {m for m in members if not hasattr(runtime, m)}
        assert not missing, f"{name} ({spec.runtime}) lacks {sorted(missing)}"
        assert runtime.pipeline_class().__name__ == spec.pipeline_class


def test_sdxl_prompt_encoding_concatenates_both_encoders_and_pools_the_second():
    from dbspec.runtime.families import family_runtime

    pipe = build_pipeline("builtin:tiny-sdxl")
    encoders, tokenizers = [pipe.text_encoder, pipe.text_encoder_2], [pipe.tokenizer, pipe.tokenizer_2]
    with torch.no_grad():
        out = family_runtime("sdxl").encode_prompts(
            encoders, tokenizers, ["a toy"], clip_skip=1, max_tokens=75, device="cpu"
        )
        second = pipe.text_encoder_2(
            pipe.tokenizer_2(["a toy"], padding="max_length", return_tensors="pt").input_ids
        )
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert out["prompt_embeds"].shape[-1] == width
    assert torch.equal(out["pooled"], second.text_embeds)


def test_sdxl_second_text_encoder_trains_at_its_own_rate(tmp_path):
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.optim import param_groups
    from dbspec.runtime.prepare import configure_models

    spec = write_spec(tmp_path, base="builtin:tiny-sdxl", steps=2, extra="[train]\ntext_encoder = true\n")
    plan = compile_spec(spec, ["optimizer.text_encoder_lr=1e-4", "optimizer.text_encoder_2_lr=2e-5"])
    assert plan.optimizer.text_encoder_2_lr == 2e-5
    comps = family_runtime("sdxl").load(plan)
    denoiser, per_encoder = configure_models(plan, comps, torch.device("cpu"))
    groups = param_groups(denoiser, per_encoder, plan.optimizer)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("denoiser", plan.optimizer.lr),
        ("text_encoder", 1e-4),
        ("text_encoder_2", 2e-5),
    ]
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in comps.text_encoders[1].parameters()}
    same = compile_spec(spec, ["optimizer.text_encoder_lr=1e-4", "optimizer.text_encoder_2_lr=1e-4"])
    assert same.optimizer.text_encoder_2_lr is None  # one group, as before the option existed
    assert execute(plan).status == "finished"
