"""A block's own rank-dropout rescale (a LyCORIS preset map entry's `rank_dropout_scale`, issue 12) against
lycoris-lora 4.1.3's modules built with it: LoConModule's row mask (make_weight) and bypass rank mask divided
by their mean on the block's layers only (runtime/lora_dropout.py), and on kohya's fused Flux Linears one
draw over the whole fused layer rescaled, LoConModule's (runtime/fused_dropout.py) and LohaModule's
(runtime/fused_lycoris_dropout.py); the same outputs and gradients from the same generator state, and tiny
runs that train and resume bit-exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan, BlockPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lora_dropout import add_lora_dropout

modules = pytest.importorskip("lycoris.modules")
LoConModule, LohaModule = modules.LoConModule, modules.LohaModule

RANK, ALPHA, P = 6, 1.5, 0.4  # a rank mask dropping every rank (0.4^6) divides by 0, as LyCORIS


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(40, 24)
        self.other = nn.Linear(40, 24)
        self.conv = nn.Conv2d(16, 12, 3, padding=1)


@pytest.mark.parametrize("form", ["lycoris", "lycoris_bypass"])
def test_block_rescale_is_lycoris_locon_rank_dropout_scale(form):
    """The block's layers (a Linear and a 3x3 convolution) draw LoConModule's mask rescaled, the other
    Linear LoConModule's plain one (kohya's network: no rescale), each from the same generator state."""
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    adapter = AdapterPlan(
        kind="lora",
        rank=RANK,
        alpha=ALPHA,
        conv_rank=RANK,
        conv_alpha=ALPHA,
        conv_targets=("conv",),
        rank_dropout=P,
        rank_dropout_form=form,
        blocks=(
            BlockPlan(
                pattern="^(proj|conv)$",
                rank=RANK,
                alpha=ALPHA,
                conv_rank=RANK,
                conv_alpha=ALPHA,
                rank_dropout_scale="on",
            ),
        ),
    )
    add_lora(net, adapter, ("proj", "other"), seed=3, conv=True)
    add_lora_dropout(net, P, 0.0, form=form)
    net.train()
    generator = torch.Generator().manual_seed(2)
    inputs = {"proj": torch.randn(2, 5, 40), "other": torch.randn(2, 5, 40), "conv": torch.randn(2, 16, 7, 6)}
    for name, x in inputs.items():
        layer, reference = getattr(net, name), copy.deepcopy(getattr(base, name))
        lyco = LoConModule(
            name,
            reference,
            1.0,
            lora_dim=RANK,
            alpha=ALPHA,
            rank_dropout=P,
            rank_dropout_scale=name != "other",
            bypass_mode=form == "lycoris_bypass",
        )
        pairs = [
            (layer.lora_A["default"].weight, lyco.lora_down.weight),
            (layer.lora_B["default"].weight, lyco.lora_up.weight),
        ]
        with torch.no_grad():
            for ours, theirs in pairs:
                value = torch.randn(ours.shape, generator=generator) * 0.3
                ours.copy_(value)
                theirs.copy_(value)
        lyco.apply_to()
        lyco.train()
        for seed in range(6):
            torch.manual_seed(seed)
            out = layer(x)
            torch.manual_seed(seed)
            ref = reference(x)
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
            weights = torch.randn(out.shape, generator=generator)
            (out * weights).sum().backward()
            (ref * weights).sum().backward()
            for ours, theirs in pairs:
                torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5)
                ours.grad, theirs.grad = None, None
    # the rescale acts: LoConModule without it, from the same state, differs on the block's Linear
    bypass = form == "lycoris_bypass"
    plain = LoConModule("p", copy.deepcopy(base.proj), 1.0, RANK, ALPHA, rank_dropout=P, bypass_mode=bypass)
    with torch.no_grad():
        plain.lora_down.weight.copy_(net.proj.lora_A["default"].weight)
        plain.lora_up.weight.copy_(net.proj.lora_B["default"].weight)
    plain.apply_to()
    plain.train()
    torch.manual_seed(1)
    unscaled = plain(inputs["proj"])
    torch.manual_seed(1)
    assert not torch.allclose(net.proj(inputs["proj"]), unscaled, atol=1e-4)


FLUX_BLOCK = (
    '[[adapter.blocks]]\npattern = "^transformer_blocks\\\\.0\\\\.attn\\\\.to_[qkv]$"\n'
    'rank = 2\nalpha = 1.5\nrank_dropout_scale = "on"\n'
)


@pytest.mark.parametrize("kind", ["loha", "lora"])
def test_block_rescale_on_a_fused_flux_layer_is_lycoris(tmp_path, kind):
    """A block's own rank_dropout_scale over a whole fused qkv (LoHa, or LoCon in LyCORIS's row form) with
    the network's rank dropout: a tiny Flux run trains and resumes bit-exact; the fused layer's one row mask
    over all its parts is LohaModule's / LoConModule's with rank_dropout_scale on the fused Linear (same
    generator state: outputs and gradients), the context qkv (no block) theirs without it."""
    from tests.runtime.runspec import whole_and_resumed
    from tests.runtime.test_lycoris_flux import BASE, LOKR, _fused_linear

    extra = LOKR.replace('kind = "lokr"', f'kind = "{kind}"')
    extra = extra.replace("fused_projections = true\n", f"fused_projections = true\nrank_dropout = {P}\n")
    if kind == "lora":
        extra = extra.replace(
            "fused_projections = true\n", 'fused_projections = true\nrank_dropout_form = "lycoris"\n'
        )
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=3, extra=extra + FLUX_BLOCK)
    assert [b.rank_dropout_scale for b in plan.adapter.blocks] == ["on"]
    transformer = whole.components.unet.float().train()
    attn = transformer.transformer_blocks[0].attn
    qkv, context = (attn.to_q, attn.to_k, attn.to_v), (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
    x, target = torch.randn(3, 16), torch.randn(3, 48)
    for parts, rescale in ((qkv, True), (context, False)):
        fused = _fused_linear([p.base_layer for p in parts])
        cls = LohaModule if kind == "loha" else LoConModule
        theirs = cls("qkv", fused, 1.0, 2, 1.5, rank_dropout=P, rank_dropout_scale=rescale)
        first = parts[0]
        with torch.no_grad():
            if kind == "loha":
                for key in ("hada_w1_b", "hada_w2_b"):
                    getattr(theirs, key).copy_(getattr(first, key)["default"])
                for key in ("hada_w1_a", "hada_w2_a"):
                    getattr(theirs, key).copy_(torch.cat([getattr(p, key)["default"] for p in parts]))
            else:
                theirs.lora_down.weight.copy_(first.lora_A["default"].weight)
                theirs.lora_up.weight.copy_(torch.cat([p.lora_B["default"].weight for p in parts]))
        theirs.apply_to()
        theirs.train()
        for seed in range(4):
            transformer.zero_grad()
            theirs.zero_grad()
            torch.manual_seed(seed)
            ours = torch.cat([p(x) for p in parts], dim=-1)
            torch.manual_seed(seed)
            expected = theirs(x)
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
            torch.nn.functional.mse_loss(ours, target).backward()
            torch.nn.functional.mse_loss(expected, target).backward()
            if kind == "loha":
                grads = (first.hada_w1_b["default"].grad, theirs.hada_w1_b.grad)
            else:
                grads = (
                    torch.cat([p.lora_B["default"].weight.grad for p in parts]),
                    theirs.lora_up.weight.grad,
                )
            torch.testing.assert_close(*grads, rtol=1e-4, atol=1e-7)


def test_tiny_sd_run_with_a_locon_block_rescale_resumes_bit_exact(tmp_path):
    """LoCon in LyCORIS's row form with the U-Net self-attention's own rescale and CLIP's q_proj own (the
    text_encoder_blocks): trains, the rescaled layers flagged, and resumes bit-exact."""
    from tests.runtime.runspec import whole_and_resumed

    extra = (
        '[adapter]\nkind = "lora"\nrank = 2\nalpha = 1.0\nrank_dropout = 0.3\n'
        'rank_dropout_form = "lycoris"\n'
        '[[adapter.blocks]]\npattern = "attn1"\nrank = 2\nalpha = 1.0\nrank_dropout_scale = "on"\n'
        '[[adapter.text_encoder_blocks]]\npattern = "q_proj"\nrank = 2\nalpha = 1.0\n'
        'rank_dropout_scale = "on"\n'
        "[train]\ntext_encoder = true\n"
    )
    plan, whole = whole_and_resumed(tmp_path, steps=3, extra=extra)
    assert [b.rank_dropout_scale for b in plan.adapter.blocks] == ["on"]
    flagged = [
        n for n, m in whole.components.unet.named_modules() if getattr(m, "dbspec_rank_dropout_scale", 0)
    ]
    assert flagged and all(".attn1." in n for n in flagged)
    text = whole.components.text_encoders[0]
    flagged = [n for n, m in text.named_modules() if getattr(m, "dbspec_rank_dropout_scale", False)]
    assert flagged and all(n.endswith("q_proj") for n in flagged)
