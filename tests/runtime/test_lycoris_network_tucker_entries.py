"""The network's `use_tucker` on a DyLoRA / GLoRA network beside its preset file's LoCon / LoHa / LoKr entries
on tiny SD 1.x (issue 12; was DBS403): DyLoraModule and GLoRAModule never read it, but create_network hands
it to every module and the entries' LoConModule / LohaModule / LokrModule build their Tucker form (lora_mid,
hada_t1 / hada_t2, lokr_t2) on k x k convolutions, so the converter gives those entries' blocks
`tucker = "on"` (lycoris_maps.network_tucker, as on a full / IA^3 network); an entry's own use_tucker = false
keeps its layers plain, and Linear / 1x1 layers ignore it. Checked against lycoris-lora 4.1.3's
create_network from the same network_args and preset: the same layers in the Tucker form, the plan's layers
(adapter weights randomised, no training) export a file its network loads (strictly but DyLoRA's keys, which
DyLoraModule never loads), and each module but DyLoRA's computes our layer's output and input gradient on a
fixed input, and the Tucker cores' gradients. No tiny run: a block's Tucker form beside other kinds (each
kind's layers built alone, runtime/mixed_kinds.py) trains in test_lycoris_whole_main_tucker.py's run. On SD3
the patch convolution's LoCon / LoKr entry alike (its one k x k convolution)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import _converted_plan
from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_own_opts_networks import _TUCKER, _built, _loaded, paired_layers, tucker_names

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the ResNets a LoCon (3x3 convolutions in the Tucker form, their time Linear and 1x1 shortcuts not), the
# downsamplers a LoHa with its own use_tucker off, the upsamplers a LoKr (Tucker), the feed-forwards a LoHa
# and CLIP's MLPs a LoKr (Linears: no Tucker form); the rest the network's DyLoRA / GLoRA
FILE = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]

[module_algo_map.ResnetBlock2D]
algo = "locon"
dim = 4
alpha = 2
[module_algo_map.Downsample2D]
algo = "loha"
dim = 2
use_tucker = false
[module_algo_map.Upsample2D]
algo = "lokr"
dim = 2
[module_algo_map.FeedForward]
algo = "loha"
dim = 2
[module_algo_map.CLIPMLP]
algo = "lokr"
dim = 2
"""
ARGS = {"dylora": {"block_size": "2", "use_tucker": "True"}, "glora": {"use_tucker": "True"}}


@pytest.mark.parametrize("algo", ["dylora", "glora"])
def test_network_tucker_reaches_the_entries_k_x_k_convolutions(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    path, plan = _converted_plan(
        tmp_path, "tucker", algo, " ".join(f'"{k}={v}"' for k, v in ARGS[algo].items()), text=FILE
    )
    a = plan.adapter
    assert a.kind == algo
    # the LoCon ResNets' and LoKr upsamplers' blocks take it; the LoHa downsamplers keep their own off
    # ("adapter": the DyLoRA / GLoRA adapter's, none) and the Linear-only LoHa feed-forwards ignore it
    assert sorted((b.kind, b.tucker) for b in a.blocks) == [
        ("loha", "adapter"),
        ("loha", "adapter"),
        ("lokr", "on"),
        ("lora", "on"),
    ]
    kept_lycoris_presets(monkeypatch)
    named, their_unet = nn.Module(), copy.deepcopy(pipe.unet)
    named.text_model = copy.deepcopy(pipe.text_encoder)  # kohya's CLIP names its modules text_model.*
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, their_unet, algo=algo, conv_dim="4", preset=str(path), **ARGS[algo]
    )
    unet, text = _built(pipe, a)
    loras = [*made.unet_loras, *made.text_encoder_loras]
    own = {"dylora": "DyLoraModule", "glora": "GLoRAModule"}[algo]
    assert {type(m).__name__ for m in loras} == {own, *_TUCKER}
    tucker, ours = tucker_names(loras, unet, text)
    assert {type(m).__name__ for m in loras if m.lora_name in tucker} == {"LoConModule", "LokrModule"}
    assert ours == tucker and any("upsamplers" in n for n in tucker)

    tensors = lycoris_state(unet=unet, text_encoders=[text], family=plan.model.family, dtype="fp32")
    skipped = _loaded(made, named, their_unet, tensors, strict=algo != "dylora")
    assert skipped == {m.lora_name for m in loras if type(m).__name__ == "DyLoraModule"}
    g = torch.Generator().manual_seed(3)
    checked = set()
    for m, layer, base, x in paired_layers(loras, unet, text, their_unet, named, g):
        mine, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, want = layer(mine), m(theirs)
        assert not torch.allclose(out, base(x), atol=1e-5), m.lora_name
        torch.testing.assert_close(want, out, rtol=1e-4, atol=1e-5, msg=m.lora_name)
        weights = torch.randn(out.shape, generator=g)
        (out * weights).sum().backward()
        (want * weights).sum().backward()
        torch.testing.assert_close(theirs.grad, mine.grad, rtol=1e-4, atol=1e-5, msg=m.lora_name)
        if m.lora_name in tucker:  # the Tucker core's gradient
            key = _TUCKER[type(m).__name__]
            core, their_core = _weight(getattr(layer, key)["default"]), _weight(getattr(m, key))
            torch.testing.assert_close(core.grad, their_core.grad, rtol=1e-4, atol=1e-6, msg=m.lora_name)
        checked.add(m.lora_name)
    assert tucker <= checked


def _weight(held) -> torch.Tensor:
    """A Tucker core's tensor: the parameter itself (LoHa's, LoKr's) or its convolution's weight (LoCon's)."""
    return held if isinstance(held, torch.Tensor) else held.weight


# LoKr at dim 1: its second factor low-rank (LokrModule's Tucker form needs it; at dim 2 it is full)
@pytest.mark.parametrize(("network", "entry", "dim"), [("dylora", "locon", 2), ("glora", "lokr", 1)])
def test_sd3_network_tucker_reaches_the_patch_entry(tmp_path, monkeypatch, network, entry, dim):
    """On SD3 the network's use_tucker beside a PatchEmbed entry of LoCon / LoHa / LoKr (was DBS403): the
    patch convolution's block `tucker = "on"` (lycoris_flux._mixed_patch_tucker, as on a LoCon / LoHa / LoKr
    network), checked as the entry's own use_tucker is (test_lycoris_whole_main_own_opts.py's check, its
    preset without the entry's own use_tucker and the network's in the command line): the plan's layer
    exports what lycoris-lora 4.1.3's module of the entry's class with use_tucker loads strictly, at the same
    scale and output."""
    from tests.runtime import test_lycoris_whole_main_own_opts as own_opts

    monkeypatch.setattr(own_opts, "SD3_OWN", own_opts.SD3_OWN.replace("use_tucker = true\n", ""))
    # the check writes `"algo={network}"` into --network_args: the network's use_tucker beside it
    own_opts.test_sd3_patch_entry_own_tucker_is_lycoris_module(
        tmp_path, f'{network}" "use_tucker=True', entry, dim
    )
