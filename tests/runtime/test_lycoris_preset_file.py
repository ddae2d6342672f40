"""LyCORIS preset files converted from kohya command lines (dbspec/convert/kohya/lycoris_file.py) against
lycoris-lora 4.1.3 reading the same file (`preset=<path>`) in its kohya network on the tiny SD 1.x U-Net and
CLIP: the converted plan adapts the layers LyCORIS builds, and a tiny run exports exactly their kohya names.

The converter resolves the file on kohya's full-size SD 1.x model; the tiny model has fewer blocks and layers,
so each file's selection is one whose layers the tiny model has (a path of the full model the tiny one lacks
adapts nothing there). kohya's attention class is `CrossAttention`, diffusers' `Attention`: the copy LyCORIS
reads names both."""

from __future__ import annotations

import copy
import tomli
from pathlib import Path

import pytest
from safetensors import safe_open
from torch import nn

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets

lycoris_kohya = pytest.importorskip("lycoris.kohya")


PRESETS = {
    # classes and names: the transformers' linears, the first and last convolutions, CLIP's MLPs
    "classes": """\
enable_conv = true
unet_target_module = ["Transformer2DModel"]
unet_target_name = ["conv_in", "conv_out"]
text_encoder_target_module = ["CLIPMLP"]
text_encoder_target_name = []
""",
    # the attention class alone (kohya's CrossAttention), LyCORIS's full lists for the text encoder
    "attention": """\
unet_target_module = ["CrossAttention"]
unet_target_name = []
""",
    # regular expressions from the path's start: some blocks' layers (full paths in the plan)
    "regex": """\
unet_target_module = []
unet_target_name = [
    'down_blocks\\.0\\..*attn2\\.to_[kv]$',
    "time_embedding.linear_2",
    "down_blocks.1.resnets.0.conv1",
]
text_encoder_target_module = []
text_encoder_target_name = [
    "text_model.encoder.layers.0.mlp.fc[12]",
    'text_model\\.encoder\\.layers\\.1\\.self_attn\\.q_proj',
]
""",
    # fnmatch patterns and exclusions: the ResNets outside the up blocks, CLIP's attention but its out_proj
    "fnmatch": """\
use_fnmatch = true
enable_conv = true
unet_target_module = ["ResnetBlock2D", "Downsample2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPSdpaAttention"]
exclude_name = ["up_blocks.*", "*.out_proj", "*.downsamplers.*"]
""",
    # enable_conv off: the name picks a 3x3 convolution LyCORIS then leaves alone
    "no-conv": """\
enable_conv = false
unet_target_module = ["ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = []
""",
}


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _lycoris_names(pipe, path: Path, tmp_path: Path, monkeypatch) -> set[str]:
    kept_lycoris_presets(monkeypatch)
    text = path.read_text(encoding="utf-8")
    if "CrossAttention" in text:
        text = text.replace('"CrossAttention"', '"CrossAttention", "Attention"')
    copied = tmp_path / "for_lycoris.toml"
    copied.write_text(text, encoding="utf-8")
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, copy.deepcopy(pipe.unet), algo="locon", conv_dim="4", preset=str(copied)
    )
    return {m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras]}


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)  # peft's suffix match


def _planned_names(pipe, adapter) -> set[str]:
    names = set()
    for name, module in pipe.unet.named_modules():
        pointwise = isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
        )
        spatial = isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1)
        convs = adapter.conv_targets if adapter.conv_rank else ()
        if (pointwise and _matches(name, adapter.denoiser_targets)) or (spatial and _matches(name, convs)):
            names.add("lora_unet_" + name.replace(".", "_"))
    for name, module in pipe.text_encoder.named_modules():
        if isinstance(module, nn.Linear) and _matches(name, adapter.text_encoder_targets):
            names.add("lora_te_text_model_" + name.replace(".", "_"))
    return names


def _converted_plan(tmp_path: Path, preset: str):
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    path = tmp_path / f"{preset}.toml"
    path.write_text(PRESETS[preset], encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo=locon" "conv_dim=4" "preset={path.name}" --learning_rate=1e-2 '
        "--max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return path, plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_file_adapts_the_layers_lycoris_builds(pipe, preset, tmp_path, monkeypatch):
    path, plan = _converted_plan(tmp_path, preset)
    theirs = _lycoris_names(pipe, path, tmp_path, monkeypatch)
    ours = _planned_names(pipe, plan.adapter)
    assert theirs, "the preset builds modules on the tiny model"
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == []


def test_preset_file_run_exports_lycoris_module_names(pipe, tmp_path, monkeypatch):
    """A tiny run of the regex preset (full-path targets): its kohya export holds LyCORIS's modules."""
    from tests.unit.convert_kit import out_path

    path, _ = _converted_plan(tmp_path, "regex")
    theirs = _lycoris_names(pipe, path, tmp_path, monkeypatch)
    done = execute(compile_spec(out_path(tmp_path), ["model.base=builtin:tiny-sd1"]))
    assert done.status == "finished"
    (export,) = Path(done.final).glob("*.kohya.safetensors")
    with safe_open(str(export), "pt") as handle:
        modules = {key.split(".")[0] for key in handle.keys()}
    assert modules == theirs


def test_converted_targets_read_the_same_file(tmp_path):
    """The file the test writes is the TOML LyCORIS reads (no key it refuses)."""
    from lycoris.utils.preset import read_preset

    for name, text in PRESETS.items():
        (tmp_path / f"{name}.toml").write_text(text, encoding="utf-8")
        assert read_preset(str(tmp_path / f"{name}.toml")) is not None
        assert tomli.loads(text)


def test_builtin_ia3_preset_builds_no_module(pipe, monkeypatch):
    """Why the converter refuses preset=ia3 (DBS402): lycoris-lora 4.1.3 re.matches its names (to_k, to_v,
    ff.net.2; k_proj, v_proj, mlp.fc2) from the start of each full path, which none begins with."""
    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, copy.deepcopy(pipe.unet), algo="ia3", preset="ia3"
    )
    assert made.unet_loras == [] and made.text_encoder_loras == [] and list(made.parameters()) == []


@pytest.mark.parametrize("v2", [False, True])
def test_inventory_is_the_full_size_models_layers(v2):
    """The converter's torch-free SD 1.x / 2.x U-Net and CLIP (lycoris_file.sd_unet / clip_text): the same
    Linear, 1x1 and k x k convolution paths as diffusers' and transformers' full-size models (built on the
    meta device; kohya's original_unet.py keeps diffusers' paths)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dbspec.convert.kohya.lycoris_file import clip_text, sd_unet

    def kinds(model, strip: str = "") -> dict[str, str]:
        out = {}
        for name, module in model.named_modules():
            name = name.removeprefix(strip)
            if isinstance(module, nn.Linear):
                out[name] = "linear"
            elif isinstance(module, nn.Conv2d):
                out[name] = "conv1" if module.kernel_size == (1, 1) else "conv"
        return out

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            cross_attention_dim=1024 if v2 else 768,
            attention_head_dim=[5, 10, 20, 20] if v2 else 8,
            use_linear_projection=v2,
        )
        layers = 23 if v2 else 12
        clip = CLIPTextModel(CLIPTextConfig(num_hidden_layers=layers, hidden_size=1024 if v2 else 768))
    assert {p: k for p, _, k in sd_unet(v2) if k} == kinds(unet)
    ours = {p.removeprefix("text_model."): k for p, _, k in clip_text(layers) if k}
    assert ours == kinds(clip, "text_model.")
