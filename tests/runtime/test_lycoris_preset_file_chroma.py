"""LyCORIS preset files with flux_train_network.py --model_type chroma (lycoris_flow_file.py over
chroma_rows.py's kohya Chroma) against lycoris-lora 4.1.3's create_network reading the same file.

As for Flux (test_lycoris_preset_file_flow.py), LyCORIS walks a tree rebuilt on the meta device from the
converter's rows (kohya's library/chroma_models.py Chroma: a scratch run compared the rows with its real
named_modules(), every path and class name in order), with the dummy CLIP-L and T5-XXL kohya hands it. The
rows' Linears translate one to one onto diffusers' ChromaTransformer2DModel's (the approximator's and the
final layer's too); a tiny Chroma run of a converted file reaching the approximator and the final layer
trains, resumes bit-exact and exports LyCORIS's module names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts, dummy_clip_l
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_preset_file_sdxl import _rebuilt

lycoris_kohya = pytest.importorskip("lycoris.kohya")

PRESETS = {
    # LyCORIS's `full` lists: Chroma's DoubleStreamBlock / SingleStreamBlock (no modulation Linear; its
    # LastLayer is no FinalLayer, its approximator in no list)
    "defaults": "",
    # the approximator's MLPEmbedder layers by class, its in_proj and the final layer by name (the final
    # layer at a dim of its own), the double blocks' attention of the img stream
    "approximator": """\
unet_target_module = ["MLPEmbedder"]
unet_target_name = [
    "distilled_guidance_layer.in_proj", "final_layer.linear", 'double_blocks\\.\\d+\\.img_attn',
]
text_encoder_target_module = []

[name_algo_map."final_layer.linear"]
dim = 8
alpha = 2
""",
}


@pytest.fixture(scope="module")
def models():
    from diffusers import ChromaTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        t5 = T5EncoderModel(
            T5Config(d_model=64, d_kv=8, d_ff=128, num_layers=24, num_heads=8, feed_forward_proj="gated-gelu")
        )
        chroma = ChromaTransformer2DModel()  # Chroma1-HD's config
    return {"kohya": _rebuilt(chroma_model()), "te": [_rebuilt(dummy_clip_l()), t5], "chroma": chroma}


def _lycoris_names(models, preset: str, monkeypatch) -> set[str]:
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, models["te"], models["kohya"], algo="locon", preset=preset
    )
    return {m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras]}


def _adapted(path: str, adapter) -> bool:
    block = next((b for b in adapter.blocks if re.search(b.pattern, path)), None)
    hit = any(path == t or path.endswith("." + t) for t in adapter.denoiser_targets)
    return hit and (block is None or block.rank > 0)


def _planned_names(adapter) -> set[str]:
    names = set()
    for path, _, kind in chroma_model():
        if kind:
            hits = [_adapted(p, adapter) for p in chroma_parts(path)]
            assert len(set(hits)) == 1, path
            if hits[0]:
                names.add("lora_unet_" + path.replace(".", "_"))
    return names


def _converted(tmp_path: Path, preset: str, overrides=None, extra: str = ""):
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    if preset in PRESETS:
        (tmp_path / f"{preset}.toml").write_text(PRESETS[preset], encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("Chroma1-HD.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "Chroma1-HD.safetensors --model_type chroma --t5xxl t5xxl.safetensors --ae ae.safetensors "
        "--apply_t5_attn_mask --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim=4 --network_alpha=1 --network_args "algo=locon" "preset={preset}.toml" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
        f"--timestep_sampling sigmoid --model_prediction_type raw --guidance_scale 0.0 {extra}",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, overrides)


def test_rows_translate_onto_diffusers_chroma(models):
    parts = [p for path, _, kind in chroma_model() if kind for p in chroma_parts(path)]
    linears = [n for n, m in models["chroma"].named_modules() if isinstance(m, nn.Linear)]
    assert sorted(parts) == sorted(linears)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_chroma_preset_file_adapts_the_layers_lycoris_builds(models, preset, tmp_path, monkeypatch):
    plan = _converted(tmp_path, preset)
    theirs = _lycoris_names(models, str(tmp_path / f"{preset}.toml"), monkeypatch)
    assert theirs and not any(n.startswith("lora_te") for n in theirs)  # no CLIP Linear, no T5 module
    assert sorted(_planned_names(plan.adapter) ^ theirs) == []
    assert plan.adapter.text_encoder_targets == () and not plan.train_text_encoder


def test_chroma_preset_file_trains_resumes_and_exports_lycoris_names(models, tmp_path, monkeypatch):
    """A tiny Chroma run of the approximator file (its final layer at dim 8): the kohya export holds
    LyCORIS's modules that tiny-chroma has, the approximator's and the final layer's among them, and a run
    stopped after 2 of 3 steps resumes to the same weights."""
    base = ["model.base=builtin:tiny-chroma", "model.text_encoder_files=[]", 'model.vae=""']
    base += ['model.denoiser_file=""', "schedule.steps=3", 'checkpoints.exports=["kohya_lora"]']
    base += ["model.t5_max_length=8"]
    plan = _converted(tmp_path, "approximator", overrides=base)
    assert plan.model.family == "chroma"
    theirs = _lycoris_names(models, str(tmp_path / "approximator.toml"), monkeypatch)
    spec = tmp_path / "specs" / "converted.toml"
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished" and whole.steps == 3
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    tensors = load_file(str(export))
    modules = {k.split(".")[0] for k in tensors}
    assert modules <= theirs
    assert {
        "lora_unet_final_layer_linear",
        "lora_unet_distilled_guidance_layer_in_proj",
        "lora_unet_distilled_guidance_layer_layers_1_out_layer",
        "lora_unet_double_blocks_0_img_attn_qkv",
    } <= modules
    assert tensors["lora_unet_final_layer_linear.lora_down.weight"].shape[0] == 8
    parts = compile_spec(spec, [*base, "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    second = execute(parts, resume=True)
    assert second.status == "finished" and second.losses[-1:] == whole.losses[-1:]
    (again,) = Path(second.final).glob("*.kohya.safetensors")
    b = load_file(str(again))
    assert tensors.keys() == b.keys() and all(torch.equal(tensors[k], b[k]) for k in tensors)

    # --dim_from_weights on that file: LyCORIS's create_network_from_weights builds its modules (the
    # approximator's and the final layer's too) at the file's ranks and loads them; the run starts from them
    from tests.runtime.test_flow_init import _loaded

    started = _converted(tmp_path / "start", "", base, f"--network_weights {export} --dim_from_weights")
    comps, count = _loaded(started)
    assert count == len(modules)
    fresh = comps.unet.float().eval()
    trained = dict(whole.components.unet.float().eval().named_modules())
    torch.manual_seed(0)
    for path in ("proj_out", "distilled_guidance_layer.layers.1.linear_2", "transformer_blocks.0.attn.to_k"):
        layer = fresh.get_submodule(path)
        x = torch.randn(2, layer.base_layer.in_features)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), trained[path](x), rtol=0, atol=1e-6)
