"""Preset-file entries' own use_scalar beside `--scale_weight_norms` on tiny SD 1.x (issue 12; was DBS403, a
spec's DBS579).

lycoris-lora 4.1.3's LoConModule / LohaModule.apply_max_norm multiply the module's scalar by the ratio, the
fixed buffer at 1 without use_scalar, use_scalar's trained Parameter with it; LokrModule's scales its
factors, its scalar left out of the norm. dbspec's max norm (runtime/max_norm.py) adds the fixed scalar only
to the LoCon / LoHa layers without a trained one (the adapter's use_scalar, or their block's own), which keep
theirs: it starts at 0 and trains. Checked against create_network from the same preset (entries' own
use_scalar on a LoCon network's LoCon / LoHa / LoKr layers, and an entry's own use_scalar = false on a
use_scalar network): the layers training a scalar, our plan's layers (weights randomised) exported and
loaded strictly into LyCORIS's network, then the max norm at two limits: the count, mean and largest norm
as apply_max_norm_regularization's, every layer's output after equal to the LyCORIS module's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.lycoris_switches import layer_scalar
from dbspec.runtime.max_norm import apply_max_norm, lycoris_norm_modules, lycoris_update
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import _converted_plan
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_mixed_full import _classes, _lycoris_classes
from tests.runtime.test_lycoris_own_opts_networks import _built

lycoris_kohya = pytest.importorskip("lycoris.kohya")

PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
text_encoder_target_module = ["CLIPMLP"]
text_encoder_target_name = []

[module_algo_map.FeedForward]
algo = "locon"
use_scalar = {own}
[module_algo_map.ResnetBlock2D]
algo = "{resnet}"
use_scalar = {own}
[module_algo_map.CLIPMLP]
algo = "{clip}"
dim = 2
use_scalar = {own}
"""

# (the network's use_scalar, the entries' own, the ResNets' algorithm, CLIP's MLPs'); the network's
# use_scalar beside other algorithms stays DBS403
CASES = {
    "entries_own_scalar": (False, "true", "loha", "lokr"),
    "locon_entries_own_scalar": (False, "true", "locon", "locon"),
    "entries_own_scalar_off": (True, "false", "locon", "locon"),
}


def _network(pipe, path, monkeypatch, use_scalar: bool):  # noqa: F811
    kept_lycoris_presets(monkeypatch)
    named, unet = nn.Module(), copy.deepcopy(pipe.unet)
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    extra = {"use_scalar": "True"} if use_scalar else {}
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo="locon", conv_dim="4", preset=str(path), **extra
    )
    return made, named, unet


def _trained(model: nn.Module, prefix: str) -> set[str]:
    """The kohya names of the model's layers training a scalar (use_scalar's; max norm's fixed one frozen)."""
    return {
        prefix + name.replace(".", "_")
        for name, layer in model.named_modules()
        if (scalar := layer_scalar(layer)) is not None and scalar.requires_grad
    }


def _pairs(made, named, their_unet, unet, text):
    """(LyCORIS module, our layer) of each adapted layer."""
    modules = {**dict(unet.named_modules()), **{f"te.{k}": v for k, v in text.named_modules()}}
    paths = {id(m): p for p, m in their_unet.named_modules()}
    paths.update({id(m): f"te.{p}" for p, m in named.text_model.named_modules()})
    return [(m, modules[paths[id(m.org_module[0])]]) for m in [*made.unet_loras, *made.text_encoder_loras]]


# the factor LyCORIS's custom_state_dict (and dbspec's export) folds use_scalar's scalar into
_FOLDED = {"LoConModule": "lora_up.weight", "LohaModule": "hada_w1_a", "LokrModule": "lokr_w1"}


def _unfolded(pairs) -> None:
    """The trained scalars back in LyCORIS's modules (its loader sets them to 1, the file holding them in
    one factor), as they stand in LyCORIS's training: LokrModule's norm leaves its scalar out."""
    with torch.no_grad():
        for m, layer in pairs:
            scalar = layer_scalar(layer)
            if scalar is None or not scalar.requires_grad:
                continue
            key = _FOLDED[type(m).__name__]
            key = key if key != "lokr_w1" or m.use_w1 else "lokr_w1_a"
            m.get_parameter(key).div_(scalar)
            m.scalar.copy_(scalar)


def _outputs_equal(pairs) -> int:
    """Each LyCORIS module gives our layer's output on a fixed input; how many."""
    g = torch.Generator().manual_seed(3)
    for m, layer in pairs:
        base = layer.get_base_layer()
        if isinstance(base, nn.Conv2d):
            x = torch.randn(1, base.in_channels, 8, 8, generator=g)
        else:
            x = torch.randn(2, base.in_features, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(m(x), layer(x), rtol=1e-4, atol=1e-5, msg=m.lora_name)
    return len(pairs)


@pytest.mark.parametrize("case", list(CASES))
def test_entries_own_scalar_with_lycoris_max_norm(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    network_scalar, own, resnet, clip = CASES[case]
    args = '"use_scalar=True" ' if network_scalar else ""
    text = PRESET.format(own=own, resnet=resnet, clip=clip)
    path, plan = _converted_plan(tmp_path, "scalar", "locon", args + "--scale_weight_norms=1", text=text)
    a = plan.adapter
    assert (a.max_norm, a.max_norm_form, a.scalar) == (1.0, "lycoris", network_scalar)
    assert {b.scalar for b in (*a.blocks, *a.text_encoder_blocks)} == {"on" if own == "true" else "off"}
    made, named, their_unet = _network(pipe, path, monkeypatch, network_scalar)
    theirs = _lycoris_classes(made)
    trains = {
        m.lora_name
        for m in [*made.unet_loras, *made.text_encoder_loras]
        if isinstance(getattr(m, "scalar", None), nn.Parameter)
    }
    unet, text_encoder = _built(pipe, a)
    assert {**_classes(unet, "lora_unet_"), **_classes(text_encoder, "lora_te_text_model_")} == theirs
    fixed = trained = 0  # use_scalar's trained (moved by _built from LyCORIS's 0), max norm's fixed at 1
    for model in (unet, text_encoder):
        for layer in model.modules():
            scalar = layer_scalar(layer)
            if scalar is None:
                continue
            if scalar.requires_grad:
                trained += 1
                assert 0 < abs(float(scalar)) < 0.5
            else:
                fixed += 1
                assert float(scalar) == 1.0
    assert trained == len(trains) and fixed and trained
    assert _trained(unet, "lora_unet_") | _trained(text_encoder, "lora_te_text_model_") == trains

    tensors = lycoris_state(unet=unet, text_encoders=[text_encoder], family=plan.model.family, dtype="fp32")
    made.apply_to(named, their_unet, apply_text_encoder=True, apply_unet=True)
    missing, unexpected = made.load_state_dict(tensors, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith(".scalar")]
    pairs = _pairs(made, named, their_unet, unet, text_encoder)
    _unfolded(pairs)
    modules = lycoris_norm_modules(unet, [text_encoder])
    assert len(modules) == len(theirs)
    with torch.no_grad():
        norms = sorted(float(lycoris_update(m).norm()) for m in modules)
    for limit in ((norms[len(norms) // 2] + norms[len(norms) // 2 + 1]) / 2, norms[0] / 2):
        ours = apply_max_norm(modules, limit)
        reference = made.apply_max_norm_regularization(limit, "cpu")
        assert ours[0] == int(reference[0]) > 0
        torch.testing.assert_close(
            torch.tensor(ours[1:]),
            torch.tensor([float(reference[1]), float(reference[2])]),
            rtol=1e-5,
            atol=0,
        )
    assert ours[0] == len(modules)  # the second limit scales every module
    assert _outputs_equal(pairs) == len(theirs)
    # the trained scalars (multiplied in place) still train
    assert _trained(unet, "lora_unet_") | _trained(text_encoder, "lora_te_text_model_") == trains
