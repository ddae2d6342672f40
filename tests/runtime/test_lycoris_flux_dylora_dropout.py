"""lycoris.kohya algo=dylora with `module_dropout` on kohya's Flux (issue 12): DyLoraModule.forward draws
`torch.rand(1) < module_dropout` from torch's global generator once per training forward of the fused
Linear, before its block draw; diffusers' parts of that Linear share the one draw (runtime/dylora.py
FusedSkip: the first part called draws, the others take it). On tiny-flux a run trains and resumes
bit-exact, and each fused layer's parts, in training, give lycoris-lora 4.1.3's DyLoraModule's outputs on
the stacked weight from the same generator state, leaving the generator where it leaves it (one draw per
fused module, not one per part)."""

from __future__ import annotations

import random

import torch
from lycoris.modules.dylora import DyLoraModule

from tests.runtime.lycoris_flow_kit import BASE, stacked_linear, unet_only_spec
from tests.runtime.runspec import whole_and_resumed

RATE = 0.5
# what the converter writes for `--network_dim 4 --network_alpha 2 --network_args algo=dylora block_size=2
# module_dropout=0.5 preset=unet-only` (tiny-flux: one double and one single block)
DROPPED = unet_only_spec(
    'kind = "dylora"\nrank = 4\nalpha = 2.0\nunit = 2\ndylora_form = "lycoris"\nfused_projections = true\n'
    f"module_dropout = {RATE}\n"
)


def _theirs(parts) -> DyLoraModule:
    """lycoris-lora's DyLoraModule on the stacked Linear, holding the parts' blocks (the shared down blocks
    once, the up blocks' rows stacked), with the run's module_dropout."""
    first = parts[0]
    module = DyLoraModule(
        "fused", stacked_linear(parts), 1.0, lora_dim=4, alpha=2.0, block_size=2, module_dropout=RATE
    )
    module.apply_to()
    with torch.no_grad():
        for i, (down, up) in enumerate(zip(module.down_list, module.up_list)):
            down.copy_(first.lora_dylora_down["default"][i])
            up.copy_(torch.cat([p.lora_dylora_up["default"][i] for p in parts]))
    return module.train()


def test_fused_dylora_module_dropout_is_one_draw_per_fused_layer(tmp_path, monkeypatch):
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=DROPPED)
    assert plan.adapter.module_dropout == RATE and len(plan.adapter.fused) == 3
    transformer = whole.components.unet
    block, single = transformer.transformer_blocks[0], transformer.single_transformer_blocks[0]
    attn = block.attn
    groups = (
        (attn.to_q, attn.to_k, attn.to_v),
        (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
        (
            single.proj_mlp,
            single.attn.to_q,
            single.attn.to_k,
            single.attn.to_v,
        ),  # diffusers calls proj_mlp first
    )
    torch.manual_seed(0)
    for parts in groups:
        x = torch.randn(3, parts[0].base_layer.in_features)
        theirs = _theirs(sorted(parts, key=lambda p: p is single.proj_mlp))  # kohya's rows: q, k, v, mlp
        order = [parts.index(p) for p in sorted(parts, key=lambda p: p is single.proj_mlp)]
        for b in range(2):
            monkeypatch.setattr(random, "randint", lambda lo, hi, b=b: b)  # DyLoraModule's block draw
            for part in parts:
                part.train()
                part.drawn["default"] = b
            torch.manual_seed(7)
            with torch.no_grad():
                expected = [theirs(x) for _ in range(8)]
            after_theirs = torch.get_rng_state()
            torch.manual_seed(7)
            with torch.no_grad():
                ours = [[p(x) for p in parts] for _ in range(8)]
            assert torch.equal(after_theirs, torch.get_rng_state())  # 8 draws, not 8 per part
            plain = torch.cat([parts[i].base_layer(x) for i in order], dim=-1)
            skipped = 0
            for outs, want in zip(ours, expected):
                got = torch.cat([outs[i] for i in order], dim=-1)
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
                parts_skipped = [torch.equal(o, parts[i].base_layer(x)) for i, o in enumerate(outs)]
                assert len(set(parts_skipped)) == 1  # the parts skip together
                skipped += parts_skipped[0]
                assert parts_skipped[0] == torch.equal(want, plain)
            assert 0 < skipped < 8  # both kinds of forward compared
        for part in parts:
            part.eval()
    x = torch.randn(1, attn.to_q.base_layer.in_features)
    state = torch.get_rng_state()
    with torch.no_grad():
        attn.to_q(x)  # outside training: no draw
    assert torch.equal(state, torch.get_rng_state())


def test_fused_module_dropout_under_gradient_checkpointing_trains_as_without(tmp_path):
    """Gradient checkpointing recomputes each block in the backward pass with torch's generator restored:
    the fused layers' shared draw is made again alike (every part had taken it), so the trained weights
    equal a run without checkpointing bit for bit."""
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import make_plan

    runs = []
    for name, on in (("plain", "false"), ("checkpointed", "true")):
        extra = DROPPED + f"\n[precision]\ngradient_checkpointing = {on}\n"
        plan = make_plan(tmp_path / name, base=BASE, steps=3, extra=extra)
        assert plan.adapter.module_dropout == RATE
        runs.append(execute(plan, keep_models=True))
    plain, checkpointed = runs
    assert (
        checkpointed.components.unet.gradient_checkpointing
        and not plain.components.unet.gradient_checkpointing
    )
    assert plain.losses == checkpointed.losses
    ours = dict(checkpointed.components.unet.named_parameters())
    trained = [(n, p) for n, p in plain.components.unet.named_parameters() if p.requires_grad]
    assert trained and all(torch.equal(p, ours[n]) for n, p in trained)
