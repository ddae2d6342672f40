"""LyCORIS LoCon's Tucker form (runtime/locon_tucker.py) against LyCORIS's own LoConModule (lycoris-lora,
what kohya's lycoris.kohya network builds for algo=locon with use_tucker): the same init from the same seed,
the same forward once the factors are copied over, and peft's merge equal to LyCORIS's weight rebuild."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from dbspec.runtime.locon_tucker import TuckerConv2d, with_tucker
from tests.runtime.shared import kept_lycoris_presets

locon = pytest.importorskip("lycoris.modules.locon")

RANK, ALPHA = 3, 2.0


class Net(nn.Module):
    def __init__(self, stride: int = 1, padding: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(6, 5, 3, stride=stride, padding=padding, dilation=dilation)
        self.proj = nn.Conv2d(5, 4, 1)  # 1x1: stays plain LoRA (LyCORIS's rule too)


def _adapted(net: nn.Module, dropout: float = 0.0) -> nn.Module:
    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=dropout,
        target_modules=["conv", "proj"],
        init_lora_weights="gaussian",
    )
    inject_adapter_in_model(with_tucker(config), net, adapter_name="default")
    return net


def _lycoris(conv: nn.Conv2d) -> nn.Module:
    return locon.LoConModule("lora_unet_conv", conv, 1.0, RANK, ALPHA, use_tucker=True)


def test_layers_and_init_are_lycoris_from_the_same_seed():
    net = Net()
    theirs_base = copy.deepcopy(net.conv)
    torch.manual_seed(3)
    _adapted(net)
    torch.manual_seed(3)
    lyco = _lycoris(theirs_base)
    layer = net.conv
    assert isinstance(layer, TuckerConv2d) and not isinstance(net.proj, TuckerConv2d)
    assert not hasattr(net.proj, "lora_mid")
    assert lyco.tucker
    pairs = {"lora_A": lyco.lora_down, "lora_mid": lyco.lora_mid, "lora_B": lyco.lora_up}
    for name, theirs in pairs.items():
        ours = getattr(layer, name)["default"]
        assert ours.weight.shape == theirs.weight.shape, name
        assert (ours.stride, ours.padding) == (theirs.stride, theirs.padding), name
        assert torch.equal(ours.weight, theirs.weight), name  # LyCORIS's draws, in its order
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # the run starts at the base model
    assert layer.lora_A["default"].weight.std() > 0 and layer.lora_mid["default"].weight.std() > 0
    assert layer.scaling["default"] == pytest.approx(lyco.scale)
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "conv.lora_mid.default.weight" in trained and not any("base_layer" in n for n in trained)


@pytest.mark.parametrize("geometry", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 0, 1)])
def test_forward_and_merge_equal_lycoris_weight_rebuild(geometry):
    """Random factors (up non-zero) copied into a real LoConModule: its forward (base weight + make_weight x
    scale, one convolution) equals the peft layer's down -> mid -> up chain, and peft's merge equals
    LyCORIS's rebuilt weight."""
    stride, padding, dilation = geometry
    net = Net(stride, padding, dilation)
    reference = copy.deepcopy(net.conv)
    _adapted(net)
    layer = net.conv
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name in ("lora_A", "lora_mid", "lora_B"):
            w = getattr(layer, name)["default"].weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    lyco = _lycoris(reference)
    with torch.no_grad():
        lyco.lora_down.weight.copy_(layer.lora_A["default"].weight)
        lyco.lora_mid.weight.copy_(layer.lora_mid["default"].weight)
        lyco.lora_up.weight.copy_(layer.lora_B["default"].weight)
    lyco.apply_to()  # the reference conv now runs LyCORIS's forward
    x = torch.randn(2, 6, 11, 9, generator=g)
    with torch.no_grad():
        ours, theirs = layer(x), reference(x)
        base = layer.base_layer(x)
    assert not torch.allclose(ours, base, atol=1e-3)  # the update is not zero
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        rebuilt = lyco._current_weight() + lyco.make_weight() * lyco.scale
    torch.testing.assert_close(layer.get_delta_weight("default"), rebuilt - layer.base_layer.weight)
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, rebuilt, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), theirs, rtol=1e-5, atol=1e-5)  # merged: the base alone
    layer.unmerge()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ours, rtol=1e-5, atol=1e-5)


def test_gradients_reach_all_three_factors_and_adapters_switch_off():
    net = _adapted(Net())
    layer = net.conv
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    x = torch.randn(2, 6, 8, 8)
    layer(x).square().sum().backward()
    for name in ("lora_A", "lora_mid", "lora_B"):
        assert getattr(layer, name)["default"].weight.grad.abs().sum() > 0, name
    layer.enable_adapters(False)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.base_layer(x))


@pytest.fixture(scope="module")
def tiny_unet():
    from dbspec.runtime.tiny import build_pipeline

    return build_pipeline("builtin:tiny-sd1").unet


@pytest.mark.parametrize(
    "args",
    [
        {"use_tucker": "True"},
        {"use_tucker": "False"},
        {"use_tucker": "0"},
        {"use_cp": "True"},
        {"use_cp": "false"},
        {"use_conv_cp": "true"},
        {"disable_conv_cp": "True"},
        {"disable_conv_cp": "False"},
        {"disable_conv_cp": ""},
        {"disable_conv_cp": "False", "use_tucker": "True"},
        {"use_tucker": "False", "use_cp": "True"},
        {"use_cp": "True", "use_conv_cp": "false"},
        {"use_conv_cp": "false", "use_cp": "True"},
    ],
)
def test_converter_reads_tucker_switches_as_lycoris_create_network(tiny_unet, monkeypatch, args):
    """dbspec's converter (`lycoris_tucker`) against lycoris-lora's kohya create_network on the same
    network_args (strings, in the given order): Tucker layers exactly when the converter says tucker."""
    from dbspec.convert.kohya.network import lycoris_tucker

    kohya = pytest.importorskip("lycoris.kohya")
    network = kohya.LycorisNetworkKohya
    preset = network.apply_preset.__func__

    def without_names(cls, values):  # 4.1.3's "full" preset names the time embedding twice: it asserts
        preset(cls, values)
        cls.UNET_TARGET_REPLACE_NAME = []
        return cls

    monkeypatch.setattr(network, "apply_preset", classmethod(without_names))
    kept_lycoris_presets(monkeypatch)
    built = kohya.create_network(1.0, 4, 2, None, nn.Module(), copy.deepcopy(tiny_unet), conv_dim="4", **args)
    tucker = [m for m in built.unet_loras if getattr(m, "tucker", False)]
    assert bool(tucker) == lycoris_tucker(args), args
    assert all(hasattr(m, "lora_mid") for m in tucker)


@pytest.mark.parametrize(("rank_dropout", "module_dropout", "multiplier"), [(0.5, 0.0, 1.0), (0.3, 0.3, 0.5)])
def test_kohya_dropouts_and_multiplier_act_on_the_down_mid_chain(rank_dropout, module_dropout, multiplier):
    """kohya networks.lora's rank / module dropout and multiplier (lora_dropout.py) on a Tucker layer: kohya's
    formula with lora_down followed by lora_mid as the down projection, same seeds, same result."""
    from dbspec.runtime.lora_dropout import add_lora_dropout
    from tests.runtime.test_lora_dropout import kohya_forward

    net = _adapted(Net())
    layer = net.conv
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()  # a non-zero update, so the masks show
    assert add_lora_dropout(net, rank_dropout, module_dropout, multiplier) == 2
    net.train()
    x = torch.randn(2, 6, 7, 7)

    def down(v):
        return layer.lora_mid["default"](layer.lora_A["default"](v))

    for seed in range(6):
        torch.manual_seed(seed)
        ours = layer(x)
        torch.manual_seed(seed)
        theirs = kohya_forward(
            layer.base_layer,
            down,
            lambda v: layer.lora_B["default"](v) * multiplier,
            x,
            ALPHA,
            RANK,
            rank_dropout,
            module_dropout,
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_per_block_ranks_keep_the_tucker_form(tiny_unet):
    """[[adapter.blocks]] rebuild the peft config (blocks.with_blocks); the Tucker registration follows it,
    and each block's convolution rank sizes lora_mid."""
    from dbspec.plan.model import AdapterPlan, BlockPlan
    from dbspec.runtime.adapters import add_lora

    unet = copy.deepcopy(tiny_unet)
    block = BlockPlan(pattern=r"^down_blocks\.0\.", rank=2, alpha=1.0, conv_rank=3, conv_alpha=1.5)
    adapter = AdapterPlan(
        kind="lora",
        rank=2,
        alpha=1.0,
        conv_rank=2,
        conv_alpha=1.0,
        conv_targets=("conv1", "conv2"),
        tucker=True,
        blocks=(block,),
    )
    add_lora(unet, adapter, ("to_q",), seed=0, conv=True)
    layers = {n: m for n, m in unet.named_modules() if isinstance(m, TuckerConv2d)}
    assert layers and all(n.endswith(("conv1", "conv2")) for n in layers)
    for name, layer in layers.items():
        rank = 3 if name.startswith("down_blocks.0.") else 2
        assert layer.lora_mid["default"].weight.shape == (rank, rank, 3, 3), name
        assert layer.lora_A["default"].weight.shape[2:] == (1, 1)
