"""lycoris.kohya algo=glora with its dropouts on kohya's Flux (issue 12): GLoRAModule.forward draws, per
training forward of the fused Linear and from torch's generators, `torch.rand(1) < module_dropout`, then in
bypass_mode two rank masks (`torch.rand(rank)`, a and b pair) and its nn.Dropout over `ax` and over `bx`'s
stacked rows. diffusers' parts of that Linear share those draws (runtime/lycoris_glora.py FusedDraws: the
first part called makes them, each part takes its rows of bx's mask). On tiny-flux a run trains and resumes
bit-exact, each fused layer's parts give lycoris-lora 4.1.3's GLoRAModule's outputs on the stacked Linear
from the same generator state, leaving the generator where it leaves it, and gradient checkpointing trains
bit for bit as without."""

from __future__ import annotations

import pytest
import torch
from lycoris.modules.glora import GLoRAModule

from tests.runtime.lycoris_flow_kit import BASE, stacked_linear, unet_only_spec
from tests.runtime.runspec import whole_and_resumed

# what the converter writes for `--network_dim 4 --network_alpha 2 --network_args algo=glora
# preset=unet-only module_dropout=0.3 [bypass_mode=True rank_dropout=0.5 dropout=0.4]` (tiny-flux)
_GLORA = 'kind = "glora"\nrank = 4\nalpha = 2.0\nfused_projections = true\nmodule_dropout = 0.3\n'
MERGED = unet_only_spec(_GLORA)
BYPASS = unet_only_spec(_GLORA + "bypass = true\nrank_dropout = 0.5\ndropout = 0.4\n")


def _theirs(parts, bypass: bool) -> GLoRAModule:
    """lycoris-lora's GLoRAModule on the stacked Linear holding the parts' pairs (a1, a2, b2 shared, b1's
    rows stacked in kohya's order), with the run's dropouts."""
    first = parts[0]
    rates = {"rank_dropout": 0.5, "dropout": 0.4} if bypass else {}
    module = GLoRAModule(
        "fused",
        stacked_linear(parts),
        1.0,
        lora_dim=4,
        alpha=2.0,
        module_dropout=0.3,
        bypass_mode=bypass,
        **rates,
    )
    module.apply_to()
    with torch.no_grad():
        for name in ("a1", "a2", "b2"):
            getattr(module, name).weight.copy_(getattr(first, f"lora_glora_{name}")["default"])
        module.b1.weight.copy_(torch.cat([p.lora_glora_b1["default"] for p in parts]))
    return module.train()


@pytest.mark.parametrize(("extra", "bypass"), [(MERGED, False), (BYPASS, True)], ids=["merged", "bypass"])
def test_fused_glora_dropouts_are_the_fused_modules_draws(tmp_path, extra, bypass):
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=extra)
    a = plan.adapter
    assert (a.module_dropout, a.bypass, len(a.fused)) == (0.3, bypass, 3)
    assert (a.rank_dropout, a.bypass_dropout) == ((0.5, 0.4) if bypass else (0.0, 0.0))
    transformer = whole.components.unet
    block, single = transformer.transformer_blocks[0], transformer.single_transformer_blocks[0]
    attn = block.attn
    assert attn.to_q.lora_glora_a2["default"].abs().sum() > 0  # trained: the pairs act
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
        kohya = sorted(parts, key=lambda p: p is single.proj_mlp)  # kohya's rows: q, k, v, mlp
        order = [parts.index(p) for p in kohya]
        theirs = _theirs(kohya, bypass)
        x = torch.randn(2, 3, parts[0].base_layer.in_features)
        for part in parts:
            part.train()
        torch.manual_seed(7)
        with torch.no_grad():
            expected = [theirs(x) for _ in range(8)]
        after_theirs = torch.get_rng_state()
        torch.manual_seed(7)
        with torch.no_grad():
            ours = [[p(x) for p in parts] for _ in range(8)]
        assert torch.equal(after_theirs, torch.get_rng_state())  # the fused module's draws, not one per part
        plain = torch.cat([parts[i].base_layer(x) for i in order], dim=-1)
        skipped = 0
        for outs, want in zip(ours, expected):
            got = torch.cat([outs[i] for i in order], dim=-1)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            skipped += torch.equal(got, plain)
        assert 0 < skipped < 8  # both kinds of forward compared
        if bypass:  # the masks drop: not what the same module computes without its dropouts
            theirs.eval()
            with torch.no_grad():
                undropped = theirs(x)
            assert not any(torch.allclose(undropped, want) for want in expected)
        for part in parts:
            part.eval()
    x = torch.randn(1, attn.to_q.base_layer.in_features)
    state = torch.get_rng_state()
    with torch.no_grad():
        attn.to_q(x)  # outside training: no draw
    assert torch.equal(state, torch.get_rng_state())


def test_fused_glora_dropouts_under_gradient_checkpointing_train_as_without(tmp_path):
    """Gradient checkpointing recomputes each block with torch's generator restored: the fused layers'
    shared draws are made again alike (every part had taken them), so the trained weights equal a run
    without checkpointing bit for bit."""
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import make_plan

    runs = []
    for name, on in (("plain", "false"), ("checkpointed", "true")):
        plan = make_plan(
            tmp_path / name,
            base=BASE,
            steps=3,
            extra=BYPASS + f"\n[precision]\ngradient_checkpointing = {on}\n",
        )
        runs.append(execute(plan, keep_models=True))
    plain, checkpointed = runs
    assert checkpointed.components.unet.gradient_checkpointing
    assert plain.losses == checkpointed.losses
    ours = dict(checkpointed.components.unet.named_parameters())
    trained = [(n, p) for n, p in plain.components.unet.named_parameters() if p.requires_grad]
    assert trained and all(torch.equal(p, ours[n]) for n, p in trained)
