"""The network's `rank_dropout` on a LoCon, LoHa, full, IA^3, GLoRA or DyLoRA network whose preset file
gives other layers LyCORIS's other algorithms (issue 12; was DBS403, a spec's DBS578): LyCORIS hands
rank_dropout to every module and each class reads it, or not, in its own forward after its module_dropout
`torch.rand(1)`: FullModule masks its copy's update rows (`torch.rand(out) > rank_dropout`, unscaled:
runtime/lycoris_full.py), DiagOFTModule drops its rotations' entries (nn.Dropout: runtime/lycoris_oft.py),
IA3Module, ButterflyOFTModule, DyLoraModule and GLoRAModule outside bypass_mode never read it; the LoCon and
LoHa layers draw their own row masks (test_lycoris_mixed_rank_dropout.py,
test_lycoris_loha_locon_rank_dropout.py). The plan's U-Net built by runtime/prepare.py (as a run builds it)
and lycoris-lora 4.1.3's network built from the same file on tiny SD 1.x, holding the same weights (the
DyLoRA blocks copied: DyLoraModule loads none), its DyLoRA draw fixed to the last block as ours:
training-mode outputs, the generator state after each forward and the full, Diag-OFT and LoHa layers' and
the decomposed LoCon layers' magnitudes' gradients equal."""

from __future__ import annotations

import random

import pytest
import torch

from dbspec.runtime.dylora import DyloraLayer
from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours, assert_magnitude_grads
from tests.runtime.test_lycoris_mixed_module_dropout import _inputs, lycoris_unet, same_draws
from tests.runtime.test_lycoris_mixed_rank_dropout import MODULE, RANK

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# LoCon ResNets and conv_in's LoRA, LoHa MLPs, DyLoRA on the transformer blocks' attention (two blocks of 2),
# Diag-OFT on the downsampler, full on the upsampler, IA^3 on conv_out, BOFT and GLoRA on the time embedding
KINDS = r"""enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
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
block_size = 2
[name_algo_map.conv_in]
algo = "lora"
[module_algo_map.CLIPMLP]
algo = "loha"
dim = 2
[module_algo_map.Downsample2D]
algo = "diag-oft"
dim = 4
[module_algo_map.Upsample2D]
algo = "full"
[name_algo_map.conv_out]
algo = "ia3"
[name_algo_map.'time_embedding.linear_1']
algo = "boft"
dim = 4
[name_algo_map.'time_embedding.linear_2']
algo = "glora"
"""

CLASSES = {
    "LoConModule",
    "LohaModule",
    "FullModule",
    "IA3Module",
    "DiagOFTModule",
    "ButterflyOFTModule",
    "GLoRAModule",
    "DyLoraModule",
}
# each kind's trained tensor whose gradient is compared: ours (peft layer attribute), LyCORIS's
GRADS = {
    "FullModule": ("lora_full", "weight"),
    "DiagOFTModule": ("lora_oft_blocks", "oft_blocks"),
    "LohaModule": ("hada_w1_a", "hada_w1_a"),
}


def _same_dylora_blocks(ours, made) -> int:
    """Copy our DyLoRA layers' blocks into LyCORIS's DyLoraModules (whose load_state_dict takes none), and
    fix both draws to the last block. How many layers."""
    count = 0
    for module in made.unet_loras:
        if type(module).__name__ != "DyLoraModule":
            continue
        layer = _layer_of(ours, module.lora_name)
        assert isinstance(layer, DyloraLayer)
        with torch.no_grad():
            for mine, theirs in zip(layer.lora_dylora_down["default"], module.down_list):
                theirs.copy_(mine.flatten(1))
            for mine, theirs in zip(layer.lora_dylora_up["default"], module.up_list):
                theirs.copy_(mine.flatten(1))
        layer.drawn["default"] = module.block_count - 1
        count += 1
    return count


def _layer_of(model, lora_name: str):
    """Our layer for a LyCORIS lora name (its dots were underscores: matched against every module's)."""
    return next(m for n, m in model.named_modules() if "lora_unet_" + n.replace(".", "_") == lora_name)


@pytest.mark.parametrize(
    ("algo", "rate"),
    [("locon", MODULE), ("loha", 0.0), ("full", 0.0), ("ia3", MODULE), ("glora", MODULE), ("dylora", 0.0)],
)
def test_rank_dropout_beside_other_kinds_is_lycoris(pipe, tmp_path, monkeypatch, algo, rate):  # noqa: F811
    """LoCon and IA^3 networks with module_dropout, LoHa and full ones without (no `torch.rand(1)` anywhere
    then) whose LoCon ResNets decompose (their entry's weight_decompose: runtime/lycoris_dora.py draws their
    masks). A full network's own layers draw FullModule's masks, an IA^3 network's none."""
    decompose = algo in ("loha", "full")
    preset = KINDS.replace("alpha = 2\n", "alpha = 2\nweight_decompose = true\n") if decompose else KINDS
    drops = {"rank_dropout": str(RANK), **({"module_dropout": str(rate)} if rate else {})}
    args = " ".join(f'"{k}={v}"' for k, v in drops.items())
    path, plan = _converted_plan(tmp_path, "rank_kinds", algo, args, text=preset)
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (
        {"locon": "lora"}.get(algo, algo),
        RANK,
        "lycoris",
        rate,
    )
    assert {b.kind for b in a.blocks} >= {"full", "ia3", "diag-oft", "boft", "glora", "dylora"} - {a.kind}
    ours = _ours(pipe, plan)
    decomposed = {n for n, m in ours.named_modules() if dora_scale_of(m, "default") is not None}
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **drops)
    assert {type(m).__name__ for m in made.unet_loras} == CLASSES
    wd = {m.lora_name: m for m in made.unet_loras if getattr(m, "wd", False)}
    assert {"lora_unet_" + n.replace(".", "_") for n in decomposed} == set(wd)
    assert {type(m).__name__ for m in wd.values()} == ({"LoConModule"} if decompose else set())
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    dylora = {m.lora_name for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    # DyLoRA layers export kohya's lora_down / lora_up, which DyLoraModule does not hold
    assert {k.split(".")[0] for k in result.unexpected_keys} <= dylora
    assert {k.split(".")[0] for k in result.missing_keys if not k.startswith("lora_te_")} <= dylora
    assert _same_dylora_blocks(ours, made) == len(dylora) > 0
    monkeypatch.setattr(random, "randint", lambda lo, hi: hi)  # DyLoraModule's draw: the last block
    assert {(round(m.rank_dropout, 6), round(m.module_dropout, 6)) for m in made.unet_loras} == {(RANK, rate)}
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    # no evaluation-mode comparison: DyLoraModule draws a block there too, ours runs every rank
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
        torch.testing.assert_close(grad.reshape(expected.shape), expected, rtol=1e-3, atol=1e-6)
        checked.add(kind)
    assert checked == set(GRADS)
    assert_magnitude_grads(ours, wd, decomposed)  # over the three masked forwards
