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
