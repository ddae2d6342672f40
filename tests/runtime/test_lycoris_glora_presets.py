"""lycoris.kohya `algo=glora` with each built-in preset: the layers lycoris-lora 4.1.3 builds GLoRAModules on
against the layers dbspec's converted plan adapts.

lycoris/kohya.py's LycorisNetworkKohya.__init__ holds a GLoRA-only restriction (`if network_module ==
GLoRAModule:` "only train transformer": the U-Net's target classes set to Transformer2DModel / Attention and
its target names cleared), but create_network hands `network_module=algo`, the string "glora", so the
comparison with the class is always False and the restriction never applies (dead since lycoris-lora
1.9.0.dev10, LyCORIS commit 64c1fe8, whose create_network first passed the algo's name; 3.2.0 alike): a GLoRA
network adapts whatever the preset's walk reaches, as every other algo's, the ResNets' linears and
convolutions too (GLoRAModule supports Linear and Conv1d/2d/3d, a 3x3 convolution's b2 at its kernel), and
`full` / `full-lin` / `unet-only` still stop kohya on its SD 1.x / 2.x U-Net with LyCORIS's duplicate-name
assert, which the restriction (clearing the target names) would have avoided. dbspec's converter takes the
presets' targets whatever the algo (convert/kohya/network.py lycoris_preset): these tests pin that agreement,
on kohya's recorded SD 1.x U-Net with the presets unpatched (tests/runtime/test_lycoris_presets_kohya_sd.py's
tree) and end to end on the tiny SD 1.x model, the converted command line's GLoRA layers against
create_network's in name, rank and scale."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
from torch import nn

from dbspec.convert.kohya.network import LYCORIS_BUILTIN_PRESETS
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import _ours, _theirs
from tests.runtime.test_lycoris_presets_kohya_sd import BUILDS, TWICE, _dbspec_names, _rebuilt, models  # noqa: F401 (a fixture)

lycoris_kohya = pytest.importorskip("lycoris.kohya")
from lycoris.config import PRESET  # noqa: E402

# LycorisNetworkKohya's dead GLoRA branch would set these U-Net target classes
RESTRICTED = ["Transformer2DModel", "Attention"]


def _restore(monkeypatch):
    kept_lycoris_presets(monkeypatch)


def _kohya_glora(models, preset: str, monkeypatch):  # noqa: F811
    _restore(monkeypatch)
    rows, clip = models["sd1"]
    return lycoris_kohya.create_network(1.0, 4, 1.0, None, clip, _rebuilt(rows), algo="glora", preset=preset)


@pytest.mark.parametrize("preset", BUILDS)
def test_glora_network_builds_the_presets_layers_on_kohyas_unet(models, preset, monkeypatch):  # noqa: F811
    """Every layer the preset reaches, and only those, is a GLoRAModule: the same set as the converter's
    targets, the ResNets' 3x3 convolutions included where the preset reaches them."""
    network = _kohya_glora(models, preset, monkeypatch)
    made = [*network.unet_loras, *network.text_encoder_loras]
    assert made and {type(m).__name__ for m in made} == {"GLoRAModule"}
    theirs = {m.lora_name for m in made}
    ours = _dbspec_names(models, "sd1", preset)
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == []
    assert lycoris_kohya.LycorisNetworkKohya.UNET_TARGET_REPLACE_MODULE != RESTRICTED
    resnet_convs = {
        m.lora_name for m in network.unet_loras if m.module_type == "conv2d" and "resnets" in m.lora_name
    }
    reaches_resnets = "ResnetBlock2D" in PRESET[preset]["unet_target_module"]
    assert bool(resnet_convs) == reaches_resnets
    if preset == "unet-convblock-only":  # the ResNets alone: no transformer layer the restriction would keep
        assert not any("attentions" in n for n in theirs)
        assert Counter(m.module_type for m in made) == {"conv2d": 66, "linear": 22}


@pytest.mark.parametrize("preset", TWICE)
def test_glora_network_still_names_the_time_embedding_twice(models, preset, monkeypatch):  # noqa: F811
    """The restriction would clear the U-Net's target names (time_embedding.linear_1 / _2) and build; it never
    applies, so algo=glora stops kohya on SD 1.x with these presets as every algo does (the converter's DBS404
    converts them as lycoris-lora 3.2, whose GLoRA branch was as dead, builds them)."""
    with pytest.raises(AssertionError, match="duplicated lora name: lora_unet_time_embedding_linear_1"):
        _kohya_glora(models, preset, monkeypatch)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _lycoris_tiny(pipe, preset: str, monkeypatch):
    """create_network(algo=glora) on the tiny diffusers SD 1.x model, the preset given diffusers' `Attention`
    beside kohya's `CrossAttention` and, where it also lists the TimestepEmbedding class, without the time
    embedding's names (the same layers, each once: test_lycoris_presets.py)."""
    _restore(monkeypatch)
    config = copy.deepcopy(PRESET[preset])
    if "CrossAttention" in config["unet_target_module"]:
        config["unet_target_module"].append("Attention")
    if "TimestepEmbedding" in config["unet_target_module"]:
        config["unet_target_name"] = [
            n for n in config["unet_target_name"] if not n.startswith("time_embedding")
        ]
    monkeypatch.setitem(lycoris_kohya.PRESET, preset, config)
    named = nn.Module()
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    return lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, copy.deepcopy(pipe.unet), algo="glora", preset=preset
    )


def _converted(tmp_path, preset: str):
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo=glora" "preset={preset}" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert outcome.exit_code == 0, errors(outcome)
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"])


@pytest.mark.parametrize("preset", [p for p in LYCORIS_BUILTIN_PRESETS if p != "ia3"])  # ia3: DBS402
def test_converted_glora_adapts_the_layers_lycoris_builds(pipe, preset, tmp_path, monkeypatch):
    """The converted plan's GLoRA layers on the tiny SD 1.x model are create_network's GLoRAModules: the same
    names, each at its rank and scale (conv_dim / conv_alpha defaulting to network_dim / network_alpha)."""
    plan = _converted(tmp_path, preset)
    assert plan.adapter.kind == "glora"
    made = _lycoris_tiny(pipe, preset, monkeypatch)
    theirs, ours = _theirs(made), _ours(pipe, plan.adapter)
    assert theirs and {v[0] for v in theirs.values()} == {"GLoRAModule"}
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
    convs = {
        m.lora_name
        for m in made.unet_loras
        if m.module_type == "conv2d" and m.org_module[0].kernel_size != (1, 1)
    }
    assert bool(convs) == bool(plan.adapter.conv_targets)
