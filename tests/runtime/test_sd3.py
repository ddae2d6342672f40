"""SD3 (builtin:tiny-sd3): flow-matching runs end to end on the CPU, checked against diffusers' own
StableDiffusion3Pipeline (prompt encoding, LoRA loading, full folders, sampling)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file
from typer.testing import CliRunner

from dbspec.cli import app
from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, make_plan, write_spec

BASE = "builtin:tiny-sd3"
LORA = '[adapter]\nkind = "lora"\nrank = 4\n'


def _inputs():
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77 + 256, 128, generator=torch.Generator().manual_seed(1))
    pooled = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    return {"hidden_states": x, "encoder_hidden_states": text, "pooled_projections": pooled}


def _call(transformer, t: float = 500.0) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**_inputs(), timestep=torch.tensor([t, t / 2])).sample


@pytest.mark.parametrize("t5_length", [256, 20])
def test_encode_prompts_is_the_pipelines(t5_length):
    """Embeddings and pooled projections equal StableDiffusion3Pipeline.encode_prompt's."""
    pipe = build_pipeline(BASE)
    family = family_runtime("sd3")
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3]
    tokenizers[2].model_max_length = t5_length  # what the family's load() sets from model.t5_max_length
    prompts = ["a photo of sks dog", "émoji ✓ and a very long prompt " * 12]
    with torch.no_grad():
        ours = family.encode_prompts(
            [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3],
            tokenizers,
            prompts,
            clip_skip=1,
            max_tokens=75,
            device=torch.device("cpu"),
        )
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=t5_length
        )
    assert ours["prompt_embeds"].shape == (2, 77 + t5_length, 128)
    torch.testing.assert_close(ours["prompt_embeds"], embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["pooled"], pooled, rtol=0, atol=1e-6)


def test_lora_run_validates_and_loads_in_the_sd3_pipeline(tmp_path):
    validation = '[validation]\nprompts = ["a photo of ohwx toy"]\nevery = 2\nsteps = 2\n'
    extra = f"{LORA}\n[train]\ntext_encoder = true\n\n{validation}"
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=extra)
    assert plan.model.prediction == "flow_matching" and plan.loss.flow is not None
    assert plan.validation.scheduler == "flow_euler"
    assert "attn.add_q_proj" in plan.adapter.denoiser_targets  # diffusers' SD3 LoRA script's targets
    trained = {c.name: c.trainable for c in plan.precision.components}
    assert trained == {
        "unet": "lora",
        "text_encoder": "lora",
        "text_encoder_2": "lora",
        "text_encoder_3": "frozen",  # T5 never trains
        "vae": "frozen",
    }
    result = execute(plan, keep_models=True)
    assert result.status == "finished" and all(torch.isfinite(torch.tensor(result.losses)))
    assert (Path(result.output) / "samples" / "step-000002" / "grid.png").exists()

    ours = _call(result.components.unet)
    pipe = build_pipeline(BASE)
    pipe.load_lora_weights(result.final)
    torch.testing.assert_close(_call(pipe.transformer), ours, rtol=0, atol=1e-4)
    assert not torch.allclose(_call(build_pipeline(BASE).transformer), ours, atol=1e-4)
    ids = pipe.tokenizer(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(
            pipe.text_encoder(ids)[0], result.components.text_encoders[0](ids)[0], rtol=0, atol=1e-4
        )


def test_full_run_with_cached_text_writes_an_sd3_folder_and_samples(tmp_path):
    plan = make_plan(
        tmp_path, base=BASE, steps=2, extra='[loss]\nflow_weighting = "cosmap"\nflow_timesteps = "mode"\n'
    )
    assert plan.cache.text_embeddings and plan.cache.latents
    assert "cosmap(σ)" in plan.loss.formula and plan.loss.flow.mode_scale == 1.29
    result = execute(plan)
    final = Path(result.final)
    assert not (final / "unet").exists()
    base = build_pipeline(BASE).transformer.state_dict()
    saved = load_file(str(final / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(saved[k], base[k]) for k in saved)
    pipe = StableDiffusion3Pipeline.from_pretrained(final)
    assert any(not torch.equal(v, base[k]) for k, v in pipe.transformer.state_dict().items())

    again = execute(compile_spec(tmp_path / "spec.toml", ["output.dir=again"]))
    assert again.losses == result.losses  # the second run reads the caches and draws the same

    out = tmp_path / "samples"
    args = ["sample", result.output, "-p", "a toy", "--steps", "2", "--size", "64", "-o", str(out)]
    cli = CliRunner().invoke(app, args)
    assert cli.exit_code == 0, cli.output
    assert (out / "p00-i00.png").exists()
    refused = CliRunner().invoke(app, [*args[:-2], "--scheduler", "ddim", "-o", str(tmp_path / "no")])
    assert refused.exit_code == 1 and "flow_euler" in refused.output


def test_interrupted_then_resumed_lora_run_is_bit_identical(tmp_path):
    spec = write_spec(tmp_path, base=BASE, steps=4, extra=LORA + "\n[checkpoints]\nevery = 2\n")
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    b = load_file(str(Path(second.final) / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
