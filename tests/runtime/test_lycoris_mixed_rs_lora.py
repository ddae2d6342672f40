"""rs_lora in a LyCORIS network of several algorithms on tiny SD 1.x (issue 12; was DBS403): the network's
rs_lora beside preset-file entries of other algorithms, and a LoKr entry's own rs_lora on a LoKr network
beside them.

lycoris-lora 4.1.3's create_single_module hands the network's rs_lora to every module (an entry's own over
it): LoConModule, LohaModule, LokrModule and GLoRAModule scale by alpha / sqrt(dim) (the plain alpha x
sqrt(dim), each block's alpha), LokrModule a layer whose two factors are full by dim / sqrt(dim) (a LoKr
block's `rank_stabilized`), DyLoraModule never reads it (its blocks keep the plain alpha). Checked against
create_network from the same preset: every layer's class, dim and scale, the LoKr factor shapes, and the
plan's layers (weights randomised, no training) exported, loaded strictly into LyCORIS's network, each LoCon /
LoHa / LoKr / GLoRA module then computing our layer's output on a fixed input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import _converted_plan
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_mixed_full import _classes, _lycoris_classes
from tests.runtime.test_lycoris_own_opts_networks import _built
from tests.runtime.test_lycoris_tlora_oft_dylora import _layers as _dylora_layers
from tests.runtime.test_lycoris_whole_main_own_opts import _lokr_shapes, _their_lokr_shapes

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the ResNets' own algorithm (the network's, or LoCon on a LoHa network), the transformers' feed-forwards
# LoHa, conv_out a LoKr whose factors are both full (dim 64), the time embedding DyLoRA; CLIP's attention
# GLoRA at dim 2, its MLPs LoKr at dim 2
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_out", "time_embedding.linear_1"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
algo = "{resnet}"
{own}
[module_algo_map.FeedForward]
algo = "loha"
[module_algo_map.CLIPAttention]
algo = "glora"
dim = 2
[name_algo_map.conv_out]
algo = "lokr"
dim = 64
[name_algo_map."time_embedding.linear_1"]
algo = "dylora"
dim = 4
[module_algo_map.CLIPMLP]
algo = "lokr"
dim = 2
"""

# (network algo, network rs_lora, the ResNets' algo, their entry's own options)
CASES = {
    "locon_network_rs_lora": ("locon", True, "locon", ""),
    "loha_network_rs_lora": ("loha", True, "locon", ""),
    "lokr_network_rs_lora": ("lokr", True, "lokr", ""),
    "lokr_entry_own_rs_lora": ("lokr", False, "lokr", "rs_lora = true"),
    "lokr_entry_own_rs_lora_off": ("lokr", True, "lokr", "rs_lora = false"),
    # networks whose own modules never read it (GLoRAModule does): its entries' blocks' alpha x sqrt(dim),
    # the LoKr ones' rank_stabilized (were DBS403)
    "dylora_network_rs_lora": ("dylora", True, "dylora", ""),
    "glora_network_rs_lora": ("glora", True, "glora", ""),
    "full_network_rs_lora": ("full", True, "full", ""),
    "ia3_network_rs_lora": ("ia3", True, "ia3", ""),
}


def _network(pipe, path, monkeypatch, algo: str, rs_lora: bool):  # noqa: F811
    kept_lycoris_presets(monkeypatch)
    named, unet = nn.Module(), copy.deepcopy(pipe.unet)
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    extra = {"rs_lora": "True"} if rs_lora else {}
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo=algo, conv_dim="4", preset=str(path), **extra
    )
    return made, named, unet


def _same_outputs(made, named, their_unet, unet, text) -> set[str]:
    """Each LoCon / LoHa / LoKr / GLoRA module of LyCORIS's network gives our layer's output on a fixed
    input; the names checked."""
    modules = {**dict(unet.named_modules()), **{f"te.{k}": v for k, v in text.named_modules()}}
    paths = {id(m): p for p, m in their_unet.named_modules()}
    paths.update({id(m): f"te.{p}" for p, m in named.text_model.named_modules()})
    g = torch.Generator().manual_seed(3)
    checked = set()
    for m in [*made.unet_loras, *made.text_encoder_loras]:
        if type(m).__name__ == "DyLoraModule":  # loads none of the file's keys
            continue
        layer = modules[paths[id(m.org_module[0])]]
        base = layer.get_base_layer()
        if isinstance(base, nn.Conv2d):
            x = torch.randn(1, base.in_channels, 8, 8, generator=g)
        else:
            x = torch.randn(2, base.in_features, generator=g)
        with torch.no_grad():
            assert not torch.allclose(layer(x), base(x), atol=1e-5), m.lora_name
            torch.testing.assert_close(m(x), layer(x), rtol=1e-4, atol=1e-5, msg=m.lora_name)
        checked.add(m.lora_name)
    return checked


@pytest.mark.parametrize("case", list(CASES))
def test_rs_lora_beside_other_algorithms_builds_as_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    algo, rs_lora, resnet, own = CASES[case]
    args = '"rs_lora=True"' if rs_lora else ""
    text = PRESET.format(resnet=resnet, own=own)
    path, plan = _converted_plan(tmp_path, "rs", algo, args, text=text)
    a = plan.adapter
    made, named, their_unet = _network(pipe, path, monkeypatch, algo, rs_lora)
    unet, text_encoder = _built(pipe, a)
    theirs = _lycoris_classes(made)
    assert {v[0] for v in theirs.values()} >= {"LohaModule", "LokrModule", "GLoRAModule", "DyLoraModule"}
    ours = {**_classes(unet, "lora_unet_"), **_classes(text_encoder, "lora_te_text_model_")}
    dylora = _dylora_layers(unet, "lora_unet_")  # DyLoRA's dim and scale: the plain alpha / dim
    ours.update({k: (v[0], v[1], round(v[3], 12)) for k, v in dylora.items()})
    assert ours == theirs
    full = theirs["lora_unet_conv_out"]  # both factors full: dim / sqrt(dim) with rs_lora, else 1
    assert full == ("LokrModule", 64, 8.0 if rs_lora else 1.0)
    assert theirs["lora_unet_time_embedding_linear_1"][2] == 0.25  # DyLoraModule: 1 / 4, rs_lora or not
    resnets = {v[2] for k, v in theirs.items() if "resnets" in k and len(v) == 3}
    rs = (rs_lora if not own else "true" in own) and resnet != "dylora"  # DyLoraModule: alpha / dim
    # the ResNets: 1 / sqrt(4) with rs_lora, else 1 / 4; a LoKr's narrow layers both factors full: 4 /
    # sqrt(4) with rs_lora, else 1 (full and IA^3: no scale)
    low_rank = {0.5 if rs else 0.25} if resnet not in ("full", "ia3") else set()
    assert resnets == low_rank | ({2.0 if rs else 1.0} if resnet == "lokr" else set())
    assert {
        **_lokr_shapes(unet, "lora_unet_"),
        **_lokr_shapes(text_encoder, "lora_te_text_model_"),
    } == _their_lokr_shapes(made)

    tensors = lycoris_state(unet=unet, text_encoders=[text_encoder], family=plan.model.family, dtype="fp32")
    made.apply_to(named, their_unet, apply_text_encoder=True, apply_unet=True)
    missing, unexpected = made.load_state_dict(tensors, strict=False)
    dyloras = {m.lora_name for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    assert {k.split(".")[0] for k in [*missing, *unexpected]} == dyloras
    for m in [*made.unet_loras, *made.text_encoder_loras]:
        if type(m).__name__ == "LokrModule" and m.use_w1 and m.use_w2:
            m.scale = 1.0  # the file loaders' scale: the export holds the full layers' scale in lokr_w1
    checked = _same_outputs(made, named, their_unet, unet, text_encoder)
    assert {"lora_unet_conv_out"} <= checked and len(checked) == len(theirs) - len(dyloras)
