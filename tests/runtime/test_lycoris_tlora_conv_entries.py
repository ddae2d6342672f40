"""A T-LoRA network's preset entries of other algorithms on the ResNets' k x k convolutions, and a Diag-OFT /
BOFT network's own k x k convolutions beside T-LoRA entries (issue 12; were DBS403): the tlora adapter's
`conv_targets`, its blocks of those kinds at their `conv_rank` (runtime/mixed_kinds.py kind_adapter), the
T-LoRA layers on none. Against lycoris-lora 4.1.3's network from the same file on tiny SD 1.x: outputs,
generator state and gradients over training forwards with module_dropout (test_lycoris_network_dropouts_
entries's `alike`); a tiny run resumes bit-exact."""

from __future__ import annotations

import pytest

from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_network_dropouts_entries import alike

pytest.importorskip("lycoris.kohya")

# the network's own on the transformers' attention and proj_in / proj_out, the `ff` entry on the ResNets
# (conv1 / conv2 k x k, time_emb_proj, the 1x1 shortcut), the `geglu` entry on the feed-forwards
RESNETS = """\
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = []

[module_algo_map.ResnetBlock2D]
algo = "{ff}"
[module_algo_map.FeedForward]
algo = "{geglu}"
"""


@pytest.mark.parametrize(
    ("resnet", "ff"),
    [
        ("locon", "loha"),
        ("loha", "lokr"),
        ("lokr", "locon"),
        ("full", "ia3"),
        ("ia3", "glora"),
        ("glora", "locon"),
        ("diag-oft", "locon"),
        ("boft", "loha"),
        # in bypass_mode: outside it LyCORIS's DyLoraModule draws a block in eval mode too, where dbspec's
        # validation takes every rank (the eval comparison's assumption)
        ("dylora", "lokr"),
    ],
)
def test_tlora_networks_resnet_entries_are_lycoris(pipe, tmp_path, monkeypatch, resnet, ff):  # noqa: F811
    """Entries of each other algorithm on the ResNets of a T-LoRA network: blocks of that kind with the
    convolutions' conv_rank (conv_dim: network_dim), T-LoRA layers on none of them."""
    own = "dim = 4\n" if resnet == "dylora" else ""
    args = {"bypass_mode": "True"} if resnet == "dylora" else {}
    a, made = alike(pipe, tmp_path, monkeypatch, "tlora", resnet, ff, args, own=own, text=RESNETS)
    assert a.kind == "tlora" and a.conv_rank == 0 and set(a.conv_targets) == {"conv1", "conv2"}
    kind = {"locon": "lora"}.get(resnet, resnet)
    # (FullModule and IA3Module never read a dim: rank 1 switches them on)
    assert [b.conv_rank for b in a.blocks if b.kind == kind] == [1 if kind in ("full", "ia3") else 4]
    names = {type(m).__name__ for m in made.unet_loras if "resnets" in m.lora_name and "conv1" in m.lora_name}
    assert len(names) == 1 and "TLoraModule" not in names


@pytest.mark.parametrize("algo", ["diag-oft", "boft"])
def test_oft_networks_convolutions_beside_tlora_entries_are_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """A Diag-OFT / BOFT network (its own layers on the attention and the ResNets, their k x k convolutions
    at conv_dim) with T-LoRA entries on the feed-forwards: a tlora adapter whose blocks of the network's kind
    hold its layers, the convolutions among its conv_targets."""
    a, made = alike(pipe, tmp_path, monkeypatch, algo, algo, "tlora", {}, text=RESNETS)
    assert a.kind == "tlora" and set(a.conv_targets) == {"conv1", "conv2"}
    assert any(b.kind == algo and b.conv_rank for b in a.blocks)
    kinds = {type(m).__name__ for m in made.unet_loras}
    assert "TLoraModule" in kinds and len(kinds) == 2


def test_tlora_network_with_locon_resnets_trains_resumes_and_reloads(tmp_path):
    """A T-LoRA network with LoCon entries on the ResNets trains 2 steps (the convolutions' LoCon layers
    move); stopped after one and resumed, the losses and files are bit-identical; `dbspec sample`'s reload
    of the adapter folders gives the trained U-Net's output."""
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec
    from tests.runtime.shared import reloads_as_trained, resumes_bit_exact
    from tests.runtime.test_lycoris_algo_maps import _converted_plan
    from tests.unit.convert_kit import out_path

    _converted_plan(tmp_path, "resnets", "tlora", "", text=RESNETS.format(ff="locon", geglu="loha"))
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "optimizer.lr=1e-2"]
    plan = compile_spec(out_path(tmp_path), [*base, "output.dir=whole"])
    whole = execute(plan, keep_models=True)
    conv = whole.components.unet.get_submodule("down_blocks.0.resnets.0.conv1")
    assert isinstance(conv, LoraLayer) and float(conv.lora_B["default"].weight.abs().sum()) > 0
    assert "unet/lora/adapter_model.safetensors" in resumes_bit_exact(out_path(tmp_path), base, whole)
    again = reloads_as_trained(plan, whole)
    assert isinstance(again.get_submodule("down_blocks.0.resnets.0.conv1"), LoraLayer)


@pytest.mark.parametrize(
    ("resnet", "args", "own"),
    [
        ("locon", {"use_tucker": "True"}, ""),
        ("loha", {"use_tucker": "True"}, ""),
        ("lokr", {}, "use_tucker = true\n"),
    ],
)
def test_tlora_networks_resnet_entries_tucker_is_lycoris(pipe, tmp_path, monkeypatch, resnet, args, own):  # noqa: F811
    """The network's use_tucker (TLoraModule never reads it) or the entry's own on a T-LoRA network's
    LoCon / LoHa / LoKr ResNet entries: their k x k convolutions in the Tucker form (the block's `tucker`),
    as LyCORIS hands it to those modules."""
    a, made = alike(pipe, tmp_path, monkeypatch, "tlora", resnet, "loha", args, own=own, text=RESNETS)
    assert [b.tucker for b in a.blocks if "conv1" in b.pattern] == ["on"]
    convs = [m for m in made.unet_loras if m.lora_name.endswith("resnets_0_conv1")]
    assert convs and all(m.tucker for m in convs)
