"""dbspec's targets for LyCORIS's presets (dbspec/convert/kohya/network.py) against lycoris-lora's own
presets applied by its kohya network to a tiny SD 1.x U-Net and CLIP: the same adapted modules.

kohya trains SD 1.x/2.x on its own U-Net (library/original_unet.py), whose classes carry diffusers' names
but for the attention (`CrossAttention`, diffusers' `Attention`): the presets' `CrossAttention` is given
diffusers' name too. lycoris-lora 4.1.3's `full` and `full-lin` name the time embedding twice (its
`TimestepEmbedding` class and `time_embedding.linear_1/2`) and assert on the duplicate: the names are dropped
when the class is there (the union of what it adapts is the same). kohya's own U-Net has that class too, so
kohya stops with those presets: tests/runtime/test_lycoris_presets_kohya_sd.py runs them unpatched on kohya's
recorded tree."""

from __future__ import annotations

import copy

import pytest
from torch import nn

from dbspec.convert.kohya.network import _PRESETS, lycoris_preset
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.shared import kept_lycoris_presets

lycoris_kohya = pytest.importorskip("lycoris.kohya")
from lycoris.config import PRESET  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _lycoris_names(pipe, preset: str, monkeypatch) -> set[str]:
    kept_lycoris_presets(monkeypatch)
    config = copy.deepcopy(PRESET[preset])
    modules = config["unet_target_module"]
    if "CrossAttention" in modules:
        modules.append("Attention")
    if "TimestepEmbedding" in modules:
        config["unet_target_name"] = [
            n for n in config["unet_target_name"] if not n.startswith("time_embedding")
        ]
    monkeypatch.setitem(lycoris_kohya.PRESET, preset, config)
    unet, text = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    named = nn.Module()
    named.text_model = text  # kohya's CLIP names its modules text_model.*
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo="lokr", preset=preset, conv_dim="4", conv_alpha="1"
    )
    return {m.lora_name for m in [*made.unet_loras, *made.text_encoder_loras]}


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)  # peft's suffix match


def _dbspec_names(pipe, preset: str) -> set[str]:
    unet_targets, text_targets, conv_targets = lycoris_preset(preset, original_names=False)
    names = set()
    for name, module in pipe.unet.named_modules():
        pointwise = isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
        )
        spatial = isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1)
        if (pointwise and _matches(name, unet_targets)) or (spatial and _matches(name, conv_targets)):
            names.add("lora_unet_" + name.replace(".", "_"))
    for name, module in pipe.text_encoder.named_modules():
        if isinstance(module, nn.Linear) and _matches(name, text_targets):
            names.add("lora_te_text_model_" + name.replace(".", "_"))
    return names


@pytest.mark.parametrize("preset", sorted(_PRESETS))
def test_preset_adapts_the_modules_lycoris_does(pipe, preset, monkeypatch):
    theirs = _lycoris_names(pipe, preset, monkeypatch)
    ours = _dbspec_names(pipe, preset)
    assert theirs and any(n.startswith("lora_te_") for n in theirs) == (not preset.startswith("unet-"))
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == []


def test_unet_convblock_only_takes_resnets_resamplers_and_the_outer_convolutions(pipe, monkeypatch):
    """unet-convblock-only: ResnetBlock2D, Downsample2D, Upsample2D and conv_in / conv_out, no attention."""
    theirs = _lycoris_names(pipe, "unet-convblock-only", monkeypatch)
    assert {"lora_unet_conv_in", "lora_unet_conv_out"} <= theirs
    assert any("downsamplers" in n for n in theirs) and any("time_emb_proj" in n for n in theirs)
    assert not any("attn" in n or "time_embedding" in n or n.startswith("lora_te_") for n in theirs)


def test_attn_mlp_takes_the_time_embedding(pipe, monkeypatch):
    """The case that was missing: LyCORIS's attn-mlp holds the TimestepEmbedding class."""
    theirs = _lycoris_names(pipe, "attn-mlp", monkeypatch)
    assert {"lora_unet_time_embedding_linear_1", "lora_unet_time_embedding_linear_2"} <= theirs
    assert "time_embedding.linear_1" in lycoris_preset("attn-mlp", original_names=False)[0]
    assert "time_embedding.linear_1" not in lycoris_preset("attn-mlp", original_names=True)[0]
