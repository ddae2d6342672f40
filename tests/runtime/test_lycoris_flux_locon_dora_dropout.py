"""lycoris.kohya algo=lora / locon with dora_wd and `module_dropout` / `rank_dropout` on kohya's fused Flux
Linears (issue 12; was DBS403 / DBS267): LoConModule(weight_decompose=True) on the fused Linear draws
`torch.rand(1) < module_dropout` once per training forward, then one mask `torch.rand(out, device) >
rank_dropout` over every row of the fused update, and decomposes W + masked ΔW per output row. dbspec's
parts (their down shared, each its rows' ups and magnitudes) share that draw
(runtime/fused_lycoris_dropout.py add_fused_locon_dora_dropout); after a 2-step tiny-flux run, the trained
double-block q/k/v in training equal lycoris-lora 4.1.3's LoConModule holding the same values on the stacked
Linear from the same generator state: outputs, the generator left alike, the down's, ups' and magnitudes'
gradients; skipped and masked forwards both met."""

from __future__ import annotations

import torch
from lycoris.modules.locon import LoConModule

from dbspec.runtime.execute import execute
from dbspec.runtime.lycoris_dora import dora_scale_of
from tests.runtime.runspec import make_plan
from tests.runtime.test_lycoris_flux import ATTN_ONLY, BASE, _fused_linear

MODULE, RANK = 0.3, 0.4
DROPS = (
    f'dora = true\ndora_form = "lycoris"\nmodule_dropout = {MODULE}\nrank_dropout = {RANK}\n'
    'rank_dropout_form = "lycoris"\n'
)
SPEC = ATTN_ONLY.replace("fused_projections = true\n", "fused_projections = true\n" + DROPS)


def _locon(parts) -> LoConModule:
    """lycoris-lora's LoConModule (weight_decompose, per output row, both dropouts) on the fused Linear of
    `parts`, holding the parts' trained values."""
    module = LoConModule(
        "qkv",
        _fused_linear([p.base_layer for p in parts]),
        1.0,
        4,
        2.0,
        module_dropout=MODULE,
        rank_dropout=RANK,
        weight_decompose=True,
    )
    with torch.no_grad():
        module.lora_down.weight.copy_(parts[0].lora_A["default"].weight)
        module.lora_up.weight.copy_(torch.cat([p.lora_B["default"].weight for p in parts]))
        module.dora_scale.copy_(torch.cat([dora_scale_of(p, "default") for p in parts]))
    module.apply_to()
    return module.train()


def test_fused_locon_dora_dropouts_draw_once_as_lycoris_module(tmp_path):
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=SPEC)
    a = plan.adapter
    assert (a.dora, a.dora_axis, a.module_dropout, a.rank_dropout) == (True, "output", MODULE, RANK)
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    attn = whole.components.unet.float().transformer_blocks[0].attn
    qkv = (attn.to_q, attn.to_k, attn.to_v)
    assert all(p.lora_A["default"].weight is qkv[0].lora_A["default"].weight for p in qkv)
    theirs = _locon(qkv)
    for p in qkv:
        p.train()
        p.zero_grad(set_to_none=True)  # the run's last gradients
    torch.manual_seed(0)
    x = torch.randn(3, 16)
    plain = torch.cat([p.base_layer(x) for p in qkv], dim=-1).detach()
    seen = set()
    for seed in range(10):
        torch.manual_seed(seed)
        want = theirs(x)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        mine = torch.cat([p(x) for p in qkv], dim=-1)
        assert torch.equal(after, torch.get_rng_state())
        torch.testing.assert_close(mine, want, rtol=0, atol=1e-5)
        skipped = torch.equal(want, plain)
        seen.add("skipped" if skipped else "drawn")
        if not skipped:
            want.square().sum().backward()
            mine.square().sum().backward()
    assert seen == {"skipped", "drawn"}
    grads = (
        (qkv[0].lora_A["default"].weight.grad, theirs.lora_down.weight.grad),
        (torch.cat([p.lora_B["default"].weight.grad for p in qkv]), theirs.lora_up.weight.grad),
        (torch.cat([dora_scale_of(p, "default").grad for p in qkv]), theirs.dora_scale.grad),
    )
    for mine, want in grads:
        torch.testing.assert_close(mine, want, rtol=1e-4, atol=1e-6)


def test_fused_locon_dora_dropouts_per_input_column_as_lycoris_module(tmp_path):
    """wd_on_output=False (was DBS403 / DBS267): LoConModule(weight_decompose=True, wd_on_out=False) with both
    dropouts on the fused Linear decomposes W + the masked ΔW by column norms spanning every part's masked
    rows; dbspec's parts share the draw and their one (1, in) magnitude (lycoris_dora.py tie_fused_doras, each
    part's column norm over every part's rows of the shared mask). Checked on the adapted model without a
    run (the saved state is the adapter-level columns' of test_lycoris_flux_locon_columns.py), its values
    moved at random: outputs, the generator left alike, the down's, ups' and magnitude's gradients."""
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models

    spec = SPEC.replace('dora_form = "lycoris"\n', 'dora_form = "lycoris"\ndora_axis = "input"\n')
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=spec)
    a = plan.adapter
    assert (a.dora, a.dora_axis, a.module_dropout, a.rank_dropout) == (True, "input", MODULE, RANK)
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    attn = comps.unet.float().transformer_blocks[0].attn
    qkv = (attn.to_q, attn.to_k, attn.to_v)
    scale = dora_scale_of(qkv[0], "default")
    assert scale.shape == (1, 16) and all(dora_scale_of(p, "default") is scale for p in qkv)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in qkv:
            p.lora_B["default"].weight.normal_(std=0.3)
        scale.mul_(1 + 0.2 * torch.rand_like(scale))
    module = LoConModule(
        "qkv",
        _fused_linear([p.base_layer for p in qkv]),
        1.0,
        4,
        2.0,
        module_dropout=MODULE,
        rank_dropout=RANK,
        weight_decompose=True,
        wd_on_out=False,
    )
    with torch.no_grad():
        module.lora_down.weight.copy_(qkv[0].lora_A["default"].weight)
        module.lora_up.weight.copy_(torch.cat([p.lora_B["default"].weight for p in qkv]))
        module.dora_scale.copy_(scale)
    module.apply_to()
    theirs = module.train()
    for p in qkv:
        p.train()
    x = torch.randn(3, 16)
    plain = torch.cat([p.base_layer(x) for p in qkv], dim=-1).detach()
    seen = set()
    for seed in range(10):
        torch.manual_seed(seed)
        want = theirs(x)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        mine = torch.cat([p(x) for p in qkv], dim=-1)
        assert torch.equal(after, torch.get_rng_state())
        torch.testing.assert_close(mine, want, rtol=0, atol=1e-5)
        skipped = torch.equal(want, plain)
        seen.add("skipped" if skipped else "drawn")
        if not skipped:
            want.square().sum().backward()
            mine.square().sum().backward()
    assert seen == {"skipped", "drawn"}
    grads = (
        (qkv[0].lora_A["default"].weight.grad, theirs.lora_down.weight.grad),
        (torch.cat([p.lora_B["default"].weight.grad for p in qkv]), theirs.lora_up.weight.grad),
        (scale.grad, theirs.dora_scale.grad),
    )
    for mine, want in grads:
        torch.testing.assert_close(mine, want, rtol=1e-4, atol=1e-6)
