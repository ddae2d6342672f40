"""lycoris-lora 4.1.3's built-in presets on kohya's own SD 1.x / 2.x U-Net (library/original_unet.py, which
train_network.py trains: a diffusers model is converted to it), as recorded from sd-scripts (commit 48d368fa)
in tests/runtime/data/kohya_sd_unet_modules.json.gz by tests/runtime/kohya_reference/make_sd_unet_modules.py.

The test rebuilds kohya's tree on the meta device (modules of the recorded class names holding real
nn.Linear / nn.Conv2d layers: all LyCORIS's walk reads), beside transformers' CLIP with kohya's
`text_model.` level, and runs lycoris-lora's real create_network on it, the presets unpatched:
- `full` (LyCORIS's default), `full-lin` and `unet-only` list the class TimestepEmbedding (added for Anima)
  and the names time_embedding.linear_1 / .linear_2; kohya's U-Net has a TimestepEmbedding at
  `time_embedding`, so LyCORIS builds those two Linears twice and create_network asserts on the duplicate
  name: kohya itself stops with these presets on SD 1.x / 2.x (on SDXL, whose time embedding is an
  nn.Sequential `time_embed`, they build: tests/runtime/test_lycoris_preset_file_sdxl.py);
- the other presets build exactly the layers dbspec's converted targets (convert/kohya/network.py
  lycoris_preset) pick on that tree and on CLIP (peft's suffix match)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_file import sd_unet
from dbspec.convert.kohya.network import LYCORIS_BUILTIN_PRESETS, _PRESETS, lycoris_preset
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip, _rebuilt

lycoris_kohya = pytest.importorskip("lycoris.kohya")

FIXTURE = Path(__file__).parent / "data" / "kohya_sd_unet_modules.json.gz"
# the presets that stop kohya on its SD 1.x / 2.x U-Net (LyCORIS's duplicate-name assert)
TWICE = ("full", "full-lin", "unet-only")
BUILDS = tuple(p for p in LYCORIS_BUILTIN_PRESETS if p not in (*TWICE, "ia3"))  # ia3: DBS402, builds nothing


def _recorded(version: str) -> list[tuple[str, str, str]]:
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as handle:
        return [tuple(row) for row in json.load(handle)[version]]


@pytest.fixture(scope="module")
def models():
    from transformers import CLIPTextConfig, CLIPTextModel

    out = {}
    with torch.device("meta"):
        for version, layers, act in (("sd1", 12, "quick_gelu"), ("sd2", 23, "gelu")):
            clip = CLIPTextModel(CLIPTextConfig(num_hidden_layers=layers, hidden_act=act))
            out[version] = (_recorded(version), _kohya_clip(clip))
    return out


def _lycoris(models, version: str, preset: str, monkeypatch):
    kept_lycoris_presets(monkeypatch)
    rows, clip = models[version]
    unet = _rebuilt(rows)
    return lycoris_kohya.create_network(
        1.0, 4, 1.0, None, clip, unet, algo="locon", preset=preset, conv_dim="4", conv_alpha="1"
    )


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)  # peft's suffix match


def _dbspec_names(models, version: str, preset: str) -> set[str]:
    unet_targets, text_targets, conv_targets = lycoris_preset(preset, original_names=False)
    rows, clip = models[version]
    names = {
        "lora_unet_" + path.replace(".", "_")
        for path, _, kind in rows
        if (kind in ("linear", "conv1") and _matches(path, unet_targets))
        or (kind == "conv" and _matches(path, conv_targets))
    }
    names |= {
        "lora_te_" + path.replace(".", "_")
        for path, module in clip.named_modules()
        if isinstance(module, nn.Linear) and _matches(path, text_targets)
    }
    return names


@pytest.mark.parametrize("version", ["sd1", "sd2"])
def test_recorded_kohya_unet_is_the_converters_inventory(version):
    """convert/kohya/lycoris_file.py's sd_unet rows (its preset-file walk and norm lists) are kohya's tree."""
    assert sd_unet(version == "sd2") == _recorded(version)


@pytest.mark.parametrize("version", ["sd1", "sd2"])
@pytest.mark.parametrize("preset", TWICE)
def test_presets_naming_the_time_embedding_twice_stop_kohya(models, version, preset, monkeypatch):
    with pytest.raises(AssertionError, match="duplicated lora name: lora_unet_time_embedding_linear_1"):
        _lycoris(models, version, preset, monkeypatch)


@pytest.mark.parametrize("version", ["sd1", "sd2"])
@pytest.mark.parametrize("preset", BUILDS)
def test_builtin_preset_adapts_the_layers_lycoris_builds_on_kohyas_unet(models, version, preset, monkeypatch):
    network = _lycoris(models, version, preset, monkeypatch)
    theirs = {m.lora_name for m in [*network.unet_loras, *network.text_encoder_loras]}
    ours = _dbspec_names(models, version, preset)
    assert theirs and any(n.startswith("lora_te_") for n in theirs) == (not preset.startswith("unet-"))
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == []
    assert preset in _PRESETS
