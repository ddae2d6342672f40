"""Flow matching and SD3 in the compiler: detection from a diffusers folder and a single file, the flow
options in the plan and its summary, and the rules that keep DDPM-only options off flow-matching models
(DBS230), flow options off DDPM ones (DBS231), and the family's prediction, exports, samplers and prompt
length (DBS380-DBS383)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from test_compile import codes, compile_in, image, planned_ok, write_spec
from test_modelinfo import CLIP_L, VAE, write_json, write_safetensors

from dbspec.compiler.modelinfo import inspect_model
from dbspec.plan.summary import training_table

SD3 = {"base": "builtin:tiny-sd3"}


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    image(tmp_path / "inst" / "a.png", (64, 64))
    return tmp_path


def _summary(plan) -> str:
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(training_table(plan))
    return out.getvalue()


def test_sd3_plan_has_the_flow_objective_and_shows_it(toy: Path):
    write_spec(
        toy,
        model=SD3,
        loss={
            "flow_timesteps": "mode",
            "flow_mode_scale": 0.8,
            "flow_weighting": "sigma_sqrt",
            "flow_shift": 3.0,
        },
    )
    plan = planned_ok(toy)
    assert (plan.model.family, plan.model.prediction, plan.loss.target) == (
        "sd3",
        "flow_matching",
        "flow_matching",
    )
    flow = plan.loss.flow
    assert (flow.timesteps, flow.mode_scale, flow.weighting, flow.shift) == ("mode", 0.8, "sigma_sqrt", 3.0)
    assert (flow.logit_mean, flow.logit_std) == (0.0, 0.0)  # the mode density reads neither
    assert plan.validation.scheduler == "flow_euler"
    assert plan.model.t5_max_length == 256
    assert [c.name for c in plan.precision.components] == [
        "unet",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "vae",
    ]
    text = _summary(plan)
    assert "σ⁻²·mse(u\u0302, u)" in plan.loss.formula and "σ⁻²·mse(" in text
    assert "σ ~ mode(0.8), shift 3" in text and "t in [" not in text


def test_ddpm_plans_have_no_flow_and_warn_on_flow_options(toy: Path):
    write_spec(toy, loss={"flow_weighting": "cosmap"})  # builtin:tiny-sd1
    planned = compile_in(toy)
    assert planned.plan is not None and planned.plan.loss.flow is None
    assert "DBS231" in codes(planned, "warning")
    write_spec(toy, model={"base": "builtin:tiny-sd1", "prediction": "epsilon"}, loss={"flow_shift": 2.0})
    assert "DBS231" in codes(compile_in(toy), "warning")  # the spec-time rule


@pytest.mark.parametrize(
    "loss",
    [
        {"min_snr_gamma": 5.0},
        {"zero_terminal_snr": True},
        {"debiased_estimation": True},
        {"noise_offset": 0.05},
        {"max_timestep": 900},
        {"kind": "pseudo_huber"},
        {"v_pred_like_loss": 0.1},
    ],
)
def test_ddpm_only_options_are_refused_on_sd3(toy: Path, loss: dict):
    write_spec(toy, model=SD3, loss=loss)
    planned = compile_in(toy)
    assert planned.plan is None and "DBS230" in codes(planned, "error")
    write_spec(toy, model={**SD3, "prediction": "flow_matching"}, loss=loss)
    assert "DBS230" in codes(compile_in(toy), "error")  # stated: the spec-time rule says it too


def test_the_family_decides_the_prediction(toy: Path):
    sd3_folder(toy / "sd35")
    write_spec(toy, model={"base": "sd35", "prediction": "epsilon"})
    assert "DBS380" in codes(compile_in(toy), "error")
    write_spec(toy, model={"base": "sd35", "family": "sd1", "prediction": "flow_matching"})
    assert "DBS380" in codes(compile_in(toy), "error")
    write_spec(toy, model={**SD3, "prediction": "epsilon"})  # a built-in says DBS312, as for the others
    assert "DBS312" in codes(compile_in(toy), "error")


def test_exports_samplers_and_prompt_length_sd3_cannot_use(toy: Path):
    write_spec(toy, model=SD3, train={"denoiser": True}, checkpoints={"exports": ["single_file"]})
    assert "DBS381" in codes(compile_in(toy), "error")
    write_spec(toy, model=SD3, validation={"prompts": ["x"], "scheduler": "ddim"})
    assert "DBS382" in codes(compile_in(toy), "error")
    write_spec(toy, validation={"prompts": ["x"], "scheduler": "flow_euler"})  # tiny-sd1
    assert "DBS382" in codes(compile_in(toy), "error")
    write_spec(toy, model={**SD3, "max_tokens": 150})
    assert "DBS383" in codes(compile_in(toy), "error")


def test_t5_length_keys_the_text_cache(toy: Path):
    write_spec(toy, model=SD3)
    first = planned_ok(toy)
    write_spec(toy, model={**SD3, "t5_max_length": 77})
    second = planned_ok(toy)
    assert second.model.t5_max_length == 77
    keys = [{img.text_key for d in p.datasets for img in d.images} for p in (first, second)]
    assert keys[0] and keys[0].isdisjoint(keys[1])


SD3_TRANSFORMER = {
    "pos_embed.proj.weight": ("BF16", (2432, 16, 2, 2)),  # 155648
    "context_embedder.weight": ("BF16", (2432, 4096)),  # 9961472
    "transformer_blocks.0.attn.add_q_proj.weight": ("BF16", (2432, 2432)),  # 5914624
}
T5 = {"shared.weight": ("BF16", (32128, 4096)), "encoder.final_layer_norm.weight": ("BF16", (4096,))}


def sd3_folder(root: Path) -> Path:
    names = ["transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"]
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }
    write_json(root / "model_index.json", index | {n: ["diffusers", "X"] for n in names})
    write_json(root / "transformer" / "config.json", {"_class_name": "SD3Transformer2DModel"})
    write_json(
        root / "scheduler" / "scheduler_config.json",
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0},
    )
    write_safetensors(root / "transformer" / "diffusion_pytorch_model.safetensors", SD3_TRANSFORMER)
    write_safetensors(root / "text_encoder" / "model.safetensors", CLIP_L)
    write_safetensors(root / "text_encoder_2" / "model.safetensors", CLIP_L)
    write_safetensors(root / "text_encoder_3" / "model.safetensors", T5)
    write_safetensors(root / "vae" / "diffusion_pytorch_model.safetensors", VAE)
    return root


def test_an_sd3_diffusers_folder_is_detected_with_its_counts(tmp_path: Path):
    root = sd3_folder(tmp_path / "sd35")
    facts = inspect_model(str(root), tmp_path)
    assert (facts.family, facts.prediction) == ("sd3", "flow_matching")
    assert facts.params["unet"] == 155648 + 9961472 + 5914624  # the denoiser, by the plan's name
    assert facts.params["text_encoder_3"] == 32128 * 4096 + 4096
    assert set(facts.params) == {"unet", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"}


def test_an_sd3_single_file_is_detected_by_its_joint_blocks(tmp_path: Path):
    tensors = {
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": ("F16", (7296, 2432)),
        "model.diffusion_model.x_embedder.proj.weight": ("F16", (2432, 16, 2, 2)),
        "first_stage_model.decoder.conv_out.weight": ("F16", (3, 128, 3, 3)),
    }
    path = write_safetensors(tmp_path / "sd3.5_large.safetensors", tensors)
    facts = inspect_model(str(path), tmp_path)
    assert (facts.family, facts.prediction) == ("sd3", "flow_matching")
    assert facts.params["unet"] == 7296 * 2432 + 2432 * 16 * 4


def test_flux_plan_trains_with_guidance_and_keeps_t5_frozen(toy: Path):
    write_spec(
        toy, model={"base": "builtin:tiny-flux"}, adapter={"kind": "lora"}, train={"text_encoder": True}
    )
    plan = planned_ok(toy)
    assert (plan.model.family, plan.loss.flow.guidance) == ("flux", 3.5)
    trained = {c.name: c.trainable for c in plan.precision.components}
    assert trained == {"unet": "lora", "text_encoder": "lora", "text_encoder_2": "frozen", "vae": "frozen"}
    write_spec(toy, model={"base": "builtin:tiny-sd3"})
    assert planned_ok(toy).loss.flow.guidance == 0.0


def test_the_model_summary_shows_the_t5_length(toy: Path):
    from dbspec.plan.summary import model_table

    write_spec(toy, model={**SD3, "t5_max_length": 77})
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(model_table(planned_ok(toy)))
    assert "T5 reads 77 tokens" in out.getvalue()
    write_spec(toy)  # tiny-sd1: no T5
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(model_table(planned_ok(toy)))
    assert "T5" not in out.getvalue()


def test_flow_guidance_replaces_flux_guidance_and_is_inert_elsewhere(toy: Path):
    write_spec(toy, model={"base": "builtin:tiny-flux"}, loss={"flow_guidance": 1.0})
    plan = planned_ok(toy)
    assert plan.loss.flow.guidance == 1.0 and "guidance 1" in _summary(plan)
    # SD3 has no guidance embedding: settled to 0, and a warning when the family is spelled out
    write_spec(toy, model={"base": "builtin:tiny-sd3", "family": "sd3"}, loss={"flow_guidance": 1.0})
    planned = compile_in(toy)
    assert planned.plan is not None and planned.plan.loss.flow.guidance == 0.0
    assert "DBS232" in codes(planned, "warning")
    write_spec(toy, model={"base": "builtin:tiny-sd1", "prediction": "epsilon"}, loss={"flow_guidance": 2.0})
    assert "DBS231" in codes(compile_in(toy), "warning")
