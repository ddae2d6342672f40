"""Exports checked by a real client: diffusers' from_single_file and load_lora_weights, on the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig
from safetensors import safe_open

from dbspec.runtime.adapters import inject_lora
from dbspec import __version__
from dbspec.plan.io import plan_hash
from dbspec.runtime import tiny
from dbspec.runtime.exports import export_kohya_lora, export_single_file, exports_for_plan, rename, unet_table
from dbspec.runtime.models import load_components
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import compile_spec, write_spec

FAMILIES = ["sd1", "sd2", "sdxl"]
META = {"dbspec.version": __version__, "dbspec.plan_hash": "sha256:test"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {f: tiny.materialize(f"builtin:tiny-{f}", root / f) for f in FAMILIES}


def _encoders(pipe) -> list:
    return [pipe.text_encoder] + ([pipe.text_encoder_2] if hasattr(pipe, "text_encoder_2") else [])


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {"unet": pipe.unet, "vae": pipe.vae, **{f"te{i}": e for i, e in enumerate(_encoders(pipe))}}


def _perturbed(family: str):
    """The built-in model with every weight moved, so a match proves the file (not the
    config folder) is read."""
    pipe = tiny.build_pipeline(f"builtin:tiny-{family}")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in _modules(pipe).values():
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.01)
    return pipe


def _load_single_file(path: Path, family: str, folder: Path):
    if family == "sdxl":
        return StableDiffusionXLPipeline.from_single_file(str(path), config=str(folder))
    return StableDiffusionPipeline.from_single_file(str(path), config=str(folder), safety_checker=None)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_loads_back_with_identical_weights(tmp_path, folders, family):
    source = _perturbed(family)
    path = export_single_file(
        tmp_path / "model.safetensors",
        unet=source.unet,
        vae=source.vae,
        text_encoders=_encoders(source),
        family=family,
        dtype="fp32",
        metadata=META,
    )
    with safe_open(str(path), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert metadata["dbspec.plan_hash"] == "sha256:test" and metadata["dbspec.version"] == __version__
    encoder_keys = {
        "sd1": ["cond_stage_model.transformer.text_model.final_layer_norm.weight"],
        "sd2": ["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"],
        "sdxl": [
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
            "conditioner.embedders.1.model.text_projection",
        ],
    }[family]
    assert {
        "model.diffusion_model.input_blocks.0.0.weight",
        "first_stage_model.decoder.up.0.block.0.conv1.weight",
        *encoder_keys,
    } <= keys
    loaded = _load_single_file(path, family, folders[family])
    for name, module in _modules(source).items():
        ours, theirs = module.state_dict(), _modules(loaded)[name].state_dict()
        assert ours.keys() == theirs.keys(), name
        for key, value in ours.items():
            assert torch.equal(value, theirs[key]), f"{name}.{key}"


def test_single_file_saves_fp16_and_marks_v_prediction(tmp_path, folders):
    source = _perturbed("sdxl")
    path = export_single_file(
        tmp_path / "model.safetensors",
        unet=source.unet,
        vae=source.vae,
        text_encoders=_encoders(source),
        family="sdxl",
        dtype="fp16",
        metadata=META,
        prediction="v_prediction",
    )
    with safe_open(str(path), "pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys() if k != "v_pred"} == {"F16"}
        assert "v_pred" in handle.keys()  # ComfyUI's v-prediction marker for SDXL
    loaded = _load_single_file(path, "sdxl", folders["sdxl"])
    for name, module in _modules(source).items():
        theirs = _modules(loaded)[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value.half().float(), theirs[key].float()), f"{name}.{key}"


def test_unet_table_places_real_sd15_and_sdxl_blocks_where_the_originals_have_them():
    sd15 = {
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "layers_per_block": 2,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    }
    sdxl = {
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "layers_per_block": 2,
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    }
    expected = {  # from the SD1.5 / SDXL base checkpoints' key names
        "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.3.0.op.weight",
        "down_blocks.3.resnets.1.conv2.weight": "input_blocks.11.0.out_layers.3.weight",
        "down_blocks.1.attentions.1.proj_in.weight": "input_blocks.5.1.proj_in.weight",
        "mid_block.resnets.1.time_emb_proj.weight": "middle_block.2.emb_layers.1.weight",
        "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
        "up_blocks.1.upsamplers.0.conv.weight": "output_blocks.5.2.conv.weight",
        "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight": (
            "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight"
        ),
        "up_blocks.1.resnets.0.conv_shortcut.weight": "output_blocks.3.0.skip_connection.weight",
    }
    for name, original in expected.items():
        assert rename(name, unet_table(sd15)) == original
    xl = unet_table(sdxl)
    assert rename("up_blocks.0.upsamplers.0.conv.weight", xl) == "output_blocks.2.2.conv.weight"
    assert rename("add_embedding.linear_2.bias", xl) == "label_emb.0.2.bias"
    assert (
        rename("down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.weight", xl)
        == "input_blocks.8.1.transformer_blocks.9.ff.net.2.weight"
    )


# --- kohya LoRA ------------------------------------------------------------------------------------------
def _adapted(family: str):
    pipe = tiny.build_pipeline(f"builtin:tiny-{family}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        inject_lora(
            pipe.unet,
            LoraConfig(
                r=4,
                lora_alpha=6,
                init_lora_weights="gaussian",
                target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"],
            ),
        )
        for encoder in _encoders(pipe):
            inject_lora(
                encoder,
                LoraConfig(
                    r=4,
                    lora_alpha=6,
                    init_lora_weights="gaussian",
                    target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"],
                ),
            )
        with torch.no_grad():  # lora_B starts at zero: give the adapters an effect to compare
            for module in [pipe.unet, *_encoders(pipe)]:
                for name, p in module.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.2)
    return pipe


def _outputs(pipe) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    unet: UNet2DConditionModel = pipe.unet
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    added = None
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        added = {
            "text_embeds": torch.randn(2, pooled, generator=generator),
            "time_ids": torch.randn(2, 6, generator=generator),
        }
    ids = torch.randint(0, 500, (2, 77), generator=generator)
    with torch.no_grad():
        sample = unet(latents, torch.tensor([10, 700]), context, added_cond_kwargs=added).sample
        return [sample] + [encoder(ids).last_hidden_state for encoder in _encoders(pipe)]


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_lora_loads_in_diffusers_with_the_adapters_outputs(tmp_path, folders, family):
    source = _adapted(family)
    path = export_kohya_lora(
        tmp_path / "x.kohya.safetensors",
        unet=source.unet,
        text_encoders=_encoders(source),
        family=family,
        dtype="fp32",
        metadata=META,
    )
    with safe_open(str(path), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
        alphas = {handle.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
    unet_key = {"sdxl": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"}.get(
        family, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    )  # sd-scripts' naming
    text_prefixes = ["lora_te1_", "lora_te2_"] if family == "sdxl" else ["lora_te_"]
    assert {f"{unet_key}.lora_down.weight", f"{unet_key}.lora_up.weight", f"{unet_key}.alpha"} <= keys
    for prefix in text_prefixes:
        assert f"{prefix}text_model_encoder_layers_0_self_attn_q_proj.alpha" in keys
    assert alphas == {6.0}
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "6.0"
    assert (
        metadata["ss_base_model_version"]
        == {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}[family]
    )
    assert metadata["dbspec.plan_hash"] == "sha256:test"

    pipe = DiffusionPipeline.from_pretrained(str(folders[family]))
    plain = _outputs(pipe)
    pipe.load_lora_weights(str(path))
    for ours, theirs, base in zip(_outputs(source), _outputs(pipe), plain):
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(base, ours, atol=1e-2)  # the adapter really changes the output


def test_kohya_lora_fp16_keeps_alpha_exact(tmp_path, folders):
    source = _adapted("sd1")
    path = export_kohya_lora(
        tmp_path / "x.kohya.safetensors",
        unet=source.unet,
        text_encoders=[None],
        family="sd1",
        dtype="fp16",
        metadata=META,
    )
    with safe_open(str(path), "pt") as handle:
        dtypes = {
            k.rsplit(".", 1)[-1] if k.endswith("alpha") else "weight": handle.get_slice(k).get_dtype()
            for k in handle.keys()
        }
        assert not any(k.startswith("lora_te") for k in handle.keys())
    assert dtypes == {"weight": "F16", "alpha": "F32"}
    pipe = DiffusionPipeline.from_pretrained(str(folders["sd1"]))
    pipe.load_lora_weights(str(path))
    torch.testing.assert_close(_outputs(pipe)[0], _outputs(source)[0], rtol=2e-2, atol=2e-2)


# --- plan glue -------------------------------------------------------------------------------------------
def _configured(tmp_path: Path, extra: str):
    plan = compile_spec(write_spec(tmp_path, steps=2, extra=extra), ["output.name=toy"])
    comps = load_components(plan)
    configure_models(plan, comps, torch.device("cpu"))
    return plan, comps


def test_exports_for_plan_writes_the_single_file_a_full_run_asks_for(tmp_path):
    plan, comps = _configured(tmp_path, '[checkpoints]\nexports = ["single_file"]\nsave_precision = "fp16"\n')
    (written,) = exports_for_plan(plan, tmp_path / "final", comps, step=2)
    assert written == tmp_path / "final" / "toy.safetensors"
    with safe_open(str(written), "pt") as handle:
        metadata = handle.metadata()
        assert handle.get_slice("model.diffusion_model.out.2.weight").get_dtype() == "F16"
    assert metadata["dbspec.plan_hash"] == plan_hash(plan) and metadata["dbspec.version"] == __version__
    assert metadata["dbspec.base_model"] == "builtin:tiny-sd1"
    training = json.loads(metadata["dbspec.training"])
    assert training["step"] == 2 and training["lr"] == plan.optimizer.lr
    assert training["datasets"][0]["images"] == len(plan.datasets[0].images)


def test_exports_for_plan_writes_the_kohya_lora_a_lora_run_asks_for(tmp_path):
    plan, comps = _configured(
        tmp_path, '[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\n[checkpoints]\nexports = ["kohya_lora"]\n'
    )
    (written,) = exports_for_plan(plan, tmp_path / "final", comps)
    assert written.name == "toy.kohya.safetensors"
    with safe_open(str(written), "pt") as handle:
        metadata = handle.metadata()
        assert all(k.startswith("lora_unet_") for k in handle.keys())  # the text encoder did not train
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"
    assert metadata["ss_output_name"] == "toy" and metadata["ss_steps"] == str(plan.schedule.total_steps)
    assert metadata["dbspec.plan_hash"] == plan_hash(plan)
