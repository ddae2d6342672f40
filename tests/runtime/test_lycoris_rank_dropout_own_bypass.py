"""The network's `rank_dropout` beside a preset file's Diag-OFT / BOFT / DyLoRA / IA^3 entries in their own
`bypass_mode` on SD 1.x/2.x and SDXL (issue 12; was DBS403, a spec's DBS578): lycoris-lora 4.1.3's bypass
forwards of those classes draw no rank mask (DiagOFTModule draws it in make_weight alone), while the file's
LoCon / LoHa / full entries draw theirs (network.rank_dropout_readers, rules.lycoris_row_masks). Flux's fused
Linears are checked in test_lycoris_flow_rank_dropout_layers.py; here the U-Net's own layers, on tiny SD 1.x,
layer by layer through the whole U-Net without a tiny run: the plan's U-Net as runtime/prepare.py builds it
(every trainable tensor moved at random) against lycoris-lora's network from the same file holding its
export (the DyLoRA blocks copied: DyLoraModule loads none), over three training forwards from one generator
state: equal outputs, generator state after each, and the full / LoHa / Diag-OFT / BOFT / IA^3 layers'
gradients."""

from __future__ import annotations

import random

import pytest
import torch

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import _inputs, lycoris_unet, same_draws
from tests.runtime.test_lycoris_rank_dropout_kinds import _layer_of, _same_dylora_blocks

lycoris_kohya = pytest.importorskip("lycoris.kohya")

RANK, MODULE = 0.25, 0.1  # at 0.2 / 0.3 the BOFT layer is dropped in each forward (no gradient to compare)
# LoCon ResNets, LoHa MLPs, full upsampler (they draw the rate); in their own bypass_mode DyLoRA on the
# transformer blocks' attention (one block: LyCORIS's bypass DyLoraModule fails on several, DBS402),
# Diag-OFT on the downsampler, IA^3 on conv_out, BOFT on the time embedding's first Linear
OWN_BYPASS = r"""enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1"]
text_encoder_target_module = []
text_encoder_target_name = []

[module_algo_map.ResnetBlock2D]
algo = "locon"
dim = 4
alpha = 2
[module_algo_map.FeedForward]
algo = "loha"
dim = 2
[module_algo_map.BasicTransformerBlock]
algo = "dylora"
dim = 4
block_size = 4
bypass_mode = true
[module_algo_map.Downsample2D]
algo = "diag-oft"
dim = 4
bypass_mode = true
[module_algo_map.Upsample2D]
algo = "full"
[name_algo_map.conv_out]
algo = "ia3"
bypass_mode = true
[name_algo_map.'time_embedding.linear_1']
algo = "boft"
dim = 4
bypass_mode = true
"""
BYPASS = {"DiagOFTModule", "ButterflyOFTModule", "DyLoraModule", "IA3Module"}
# each kind's trained tensor whose gradient is compared: ours (peft layer attribute), LyCORIS's
GRADS = {
    "FullModule": ("lora_full", "weight"),
    "LohaModule": ("hada_w1_a", "hada_w1_a"),
    "DiagOFTModule": ("lora_oft_blocks", "oft_blocks"),
    "ButterflyOFTModule": ("lora_oft_blocks", "oft_blocks"),
    "IA3Module": ("lora_ia3", "weight"),
}


@pytest.mark.parametrize("algo", ["glora", "dylora", "loha"])
def test_entries_in_their_own_bypass_mode_draw_no_rank_dropout(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """GLoRA, DyLoRA and LoHa networks with rank_dropout and module_dropout: the bypass entries' modules hold
    the rate and never draw it, the LoCon / LoHa / full entries (and a LoHa network's own layers) draw theirs;
    the same draws in the same order as lycoris-lora's network."""
    drops = {"rank_dropout": str(RANK), "module_dropout": str(MODULE)}
    extra = ' "block_size=2"' if algo == "dylora" else ""
    args = " ".join(f'"{k}={v}"' for k, v in drops.items()) + extra
    path, plan = _converted_plan(tmp_path, "own_bypass", algo, args, text=OWN_BYPASS)
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (algo, RANK, "lycoris", MODULE)
    own = {"dylora": "adapter"}.get(algo, "dylora")  # a DyLoRA network's DyLoRA entry: the adapter's kind
    assert {b.kind for b in a.blocks if b.bypass} == {"diag-oft", "boft", "ia3", own}
    assert {b.kind for b in a.blocks if not b.bypass} >= {"lora", "full"}
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(
        pipe, monkeypatch, algo, path, **drops, **({"block_size": "2"} if extra else {})
    )
    bypassed = {type(m).__name__ for m in made.unet_loras if getattr(m, "bypass_mode", False)}
    assert bypassed == BYPASS
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    dylora = {m.lora_name for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    # DyLoRA layers export kohya's lora_down / lora_up, which DyLoraModule does not hold
    assert {k.split(".")[0] for k in result.unexpected_keys} <= dylora
    assert {k.split(".")[0] for k in result.missing_keys if not k.startswith("lora_te_")} <= dylora
    assert _same_dylora_blocks(ours, made) == len(dylora) > 0
    monkeypatch.setattr(random, "randint", lambda lo, hi: hi)  # DyLoraModule's draw: the last block
    assert {(round(m.rank_dropout, 6), round(m.module_dropout, 6)) for m in made.unet_loras} == {
        (RANK, MODULE)
    }
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    ours.train(), theirs.train(), made.train()
    outputs = same_draws(ours, theirs, (latents, t, context), 3, backward=True)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)  # the draws move on
    checked = set()
    for module in made.unet_loras:
        kind = type(module).__name__
        if kind not in GRADS:
            continue
        mine, other = GRADS[kind]
        grad = getattr(_layer_of(ours, module.lora_name), mine)["default"].grad
        expected = getattr(module, other).grad
        torch.testing.assert_close(
            grad.reshape(expected.shape), expected, rtol=1e-3, atol=1e-6, msg=module.lora_name
        )
        checked.add(kind)
    assert checked == set(GRADS)
