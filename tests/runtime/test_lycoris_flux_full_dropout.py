"""lycoris.kohya algo=full with `module_dropout` and `rank_dropout` on Flux (issue 12; was DBS403): kohya's
Flux holds q/k/v (and the single blocks' q/k/v/MLP in linear1) as one fused Linear, so its one FullModule
draws `torch.rand(1) < module_dropout` once per training forward, then one mask `torch.rand(out) >
rank_dropout` over every row of the fused weight and bias. The converted spec (`fused_projections = true`)
trains on tiny-flux (2 steps), and each fused Linear's trained diffusers parts, called in
diffusers' order (the single block's proj_mlp first), compute what lycoris-lora 4.1.3's FullModule on the
stacked Linear computes from the same generator state: equal outputs and gradients, the generator left where
FullModule leaves it (one draw of each per fused layer, not per part), skipped, masked and whole forwards
all met."""

from __future__ import annotations

import torch
from lycoris.modules.full import FullModule

from dbspec.runtime.execute import execute
from tests.runtime.lycoris_flow_kit import BASE, stacked_linear, unet_only_spec
from tests.runtime.runspec import make_plan

MODULE, RANK = 0.3, 0.4
# what the converter writes for `--network_args algo=full preset=unet-only module_dropout=0.3
# rank_dropout=0.4` (tiny-flux: one single block)
FULL = unet_only_spec(
    f'kind = "full"\nmodule_dropout = {MODULE}\nrank_dropout = {RANK}\nfused_projections = true\n'
)


def test_full_dropouts_on_fused_layers_draw_once_as_lycoris_full_module(tmp_path):
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=FULL)
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    a = plan.adapter
    assert (a.kind, a.module_dropout, a.rank_dropout, len(a.fused)) == ("full", MODULE, RANK, 3)
    transformer = whole.components.unet.float()
    block, single = transformer.transformer_blocks[0].attn, transformer.single_transformer_blocks[0]
    torch.manual_seed(0)
    x = torch.randn(3, block.to_q.base_layer.in_features)
    qkv = (block.to_q, block.to_k, block.to_v)
    linear1 = (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp)
    for name, rows, order in (("img_attn_qkv", qkv, qkv), ("linear1", linear1, (linear1[3], *linear1[:3]))):
        theirs = FullModule(name, stacked_linear(rows), 1.0, module_dropout=MODULE, rank_dropout=RANK)
        theirs.apply_to()  # kohya's network: the module holds the whole fused weight
        with torch.no_grad():
            theirs.weight.copy_(torch.cat([p.lora_full["default"] for p in rows]))
            theirs.bias.copy_(torch.cat([p.lora_full_bias["default"] for p in rows]))
        theirs.train()
        for p in rows:
            p.train()
            p.lora_full["default"].grad = p.lora_full_bias["default"].grad = None
        plain = torch.cat([p.base_layer(x) for p in rows], dim=-1).detach()
        with torch.no_grad():
            whole_out = torch.cat([p.eval()(x) for p in rows], dim=-1)  # no draw outside training
        for p in rows:
            p.train()
        seen = set()
        for seed in range(10):
            torch.manual_seed(seed)
            want = theirs(x)
            after = torch.get_rng_state()
            torch.manual_seed(seed)
            out = {id(p): p(x) for p in order}  # the first called draws, the others take it
            mine = torch.cat([out[id(p)] for p in rows], dim=-1)
            assert torch.equal(after, torch.get_rng_state()), name
            torch.testing.assert_close(mine, want, rtol=0, atol=1e-5)
            skipped = torch.equal(want, plain)
            seen.add("skipped" if skipped else "whole" if torch.allclose(want, whole_out) else "masked")
            if not skipped:
                want.square().sum().backward()
                mine.square().sum().backward()
        assert {"skipped", "masked"} <= seen, (name, seen)
        grads = torch.cat([p.lora_full["default"].grad for p in rows])
        torch.testing.assert_close(grads, theirs.weight.grad, rtol=1e-4, atol=1e-5)
        bias_grads = torch.cat([p.lora_full_bias["default"].grad for p in rows])
        torch.testing.assert_close(bias_grads, theirs.bias.grad, rtol=1e-4, atol=1e-5)


def test_full_rank_dropout_on_a_swapped_linear_drops_kohyas_rows():
    """SD3's last context modulation feeds diffusers' AdaLayerNormContinuous, (scale, shift) where kohya's
    layer holds (shift, scale): FullModule's mask on kohya's rows drops the diffusers row each stands for
    (runtime/lycoris_full.py: the mask's halves swapped), equal outputs from the same generator state."""
    from diffusers.models.normalization import AdaLayerNormContinuous
    from torch import nn

    from dbspec.plan.model import AdapterPlan
    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.lycoris_full import add_full_rank_dropout
    from dbspec.runtime.sd3_kohya import swapped

    torch.manual_seed(0)
    net = nn.Module()
    net.norm = AdaLayerNormContinuous(4, 6, elementwise_affine=False, eps=1e-6)
    base = net.norm.linear
    half = base.out_features // 2
    kohya = nn.Linear(base.in_features, base.out_features)
    with torch.no_grad():
        kohya.weight.copy_(base.weight.roll(half, 0))
        kohya.bias.copy_(base.bias.roll(half, 0))
    add_lora(net, AdapterPlan(kind="full"), ("norm.linear",), seed=3, conv=False)
    assert add_full_rank_dropout(net, RANK, (), lambda path: swapped(path, net)) == 1
    layer = net.norm.linear
    with torch.no_grad():
        layer.lora_full["default"].add_(torch.randn_like(base.weight) * 0.3)
        layer.lora_full_bias["default"].add_(torch.randn_like(base.bias) * 0.3)
    theirs = FullModule("norm", kohya, 1.0, rank_dropout=RANK)
    theirs.apply_to()
    with torch.no_grad():
        theirs.weight.copy_(layer.lora_full["default"].roll(half, 0))
        theirs.bias.copy_(layer.lora_full_bias["default"].roll(half, 0))
    net.train(), theirs.train()
    x = torch.randn(5, base.in_features)
    for seed in range(4):
        torch.manual_seed(seed)
        want = theirs(x).roll(half, -1)
        torch.manual_seed(seed)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), want.detach(), rtol=0, atol=1e-5)
