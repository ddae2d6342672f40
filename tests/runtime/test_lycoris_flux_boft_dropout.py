"""lycoris.kohya algo=boft with `module_dropout` (issue 12): ButterflyOFTModule.forward draws
`torch.rand(1) < module_dropout` from torch's global generator once per training forward, before anything
else, and answers with its org_forward below the rate. On kohya's Flux / SD3 that is one draw per fused
Linear: diffusers' parts share it (runtime/fused.py FusedSkip, set up by add_boft_module_dropout). Checked
against lycoris-lora 4.1.3's ButterflyOFTModule on the stacked Linear (and on a Linear of its own, SD's
case): training outputs equal from the same generator state, the generator left where it leaves it; then a
tiny-flux run trains and resumes bit-exact, its fused parts skipping together, and gradient checkpointing
trains bit-equal to a run without."""

from __future__ import annotations

import pytest
import torch
from peft import inject_adapter_in_model
from torch import nn

from dbspec.runtime.lycoris_boft import add_boft_module_dropout, boft_config
from tests.runtime.lycoris_flow_kit import BASE, stacked_linear, unet_only_spec
from tests.runtime.runspec import whole_and_resumed
from tests.runtime.test_lycoris_flux_boft import _fused, _theirs

boft = pytest.importorskip("lycoris.modules.boft")

RATE = 0.5
# what the converter writes for `--network_dim 16 --network_args algo=boft module_dropout=0.5 rescaled=True
# preset=unet-only` (tiny-flux)
DROPPED = unet_only_spec(
    f'kind = "boft"\nblock_size = 16\nrescaled = true\nmodule_dropout = {RATE}\nfused_projections = true\n'
)


def _compare(ours, theirs: nn.Module, x: torch.Tensor, plain: torch.Tensor) -> None:
    """8 training forwards of `ours()` (the parts' outputs concatenated) and of lycoris-lora's module from the
    same generator state: equal outputs and generator states, both skipped and rotated forwards seen."""
    torch.manual_seed(7)
    with torch.no_grad():
        expected = [theirs(x) for _ in range(8)]
    after = torch.get_rng_state()
    torch.manual_seed(7)
    with torch.no_grad():
        got = [ours() for _ in range(8)]
    assert torch.equal(after, torch.get_rng_state())  # one draw per module and forward, not per part
    skipped = 0
    for mine, want in zip(got, expected):
        torch.testing.assert_close(mine, want, rtol=0, atol=1e-5)
        skipped += torch.equal(mine, plain)
        assert torch.equal(mine, plain) == torch.equal(want, plain)
    assert 0 < skipped < 8  # both kinds of forward compared


@pytest.mark.parametrize("bypass", [False, True])
def test_fused_parts_draw_once_as_lycoris_module(bypass):
    torch.manual_seed(0)
    model, parts = _fused(16, 64, 16, 0.0, True, bypass)
    assert add_boft_module_dropout(model, RATE) == 4
    with torch.no_grad():
        parts[0].lora_oft_blocks["default"].normal_(0, 0.2)
        for part in parts:
            part.lora_oft_rescale["default"].uniform_(0.5, 1.5)
    rescale = torch.cat([p.lora_oft_rescale["default"].detach() for p in parts])
    theirs = _theirs(parts, parts[0].lora_oft_blocks["default"].detach().clone(), 0.0, rescale, bypass)
    theirs.module_dropout = RATE  # ButterflyOFTModule's own attribute, as its constructor sets it
    model.train(), theirs.train()
    x = torch.randn(5, 8)
    plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
    _compare(lambda: torch.cat([p(x) for p in parts], dim=-1), theirs, x, plain)
    model.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        parts[0](x)  # outside training: no draw
    assert torch.equal(state, torch.get_rng_state())


def test_a_layer_of_its_own_draws_as_lycoris_module():
    """SD's case (train_network.py): each BOFT layer its own draw."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32))
    inject_adapter_in_model(boft_config(["0"], 8, 0.0, False), model, adapter_name="default")
    assert add_boft_module_dropout(model, RATE) == 1
    layer = model[0]
    with torch.no_grad():
        layer.lora_oft_blocks["default"].normal_(0, 0.2)
    theirs = boft.ButterflyOFTModule("own", stacked_linear([layer]), 1.0, lora_dim=8, module_dropout=RATE)
    theirs.load_state_dict(
        {"oft_blocks": layer.lora_oft_blocks["default"].detach().clone(), "alpha": torch.tensor(0.0)}
    )
    theirs.apply_to()
    model.train(), theirs.train()
    x = torch.randn(5, 8)
    _compare(lambda: layer(x), theirs, x, layer.base_layer(x))


def test_tiny_flux_trains_and_resumes_with_fused_draws(tmp_path):
    plan, whole = whole_and_resumed(tmp_path, base=BASE, steps=4, extra=DROPPED)
    assert plan.adapter.module_dropout == RATE and len(plan.adapter.fused) == 3
    single = whole.components.unet.single_transformer_blocks[0]
    parts = [single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp]
    assert len({id(p.__dict__["boft_skip"]) for p in parts}) == 1
    x = torch.randn(2, parts[0].base_layer.in_features)
    for part in parts:
        part.train()
    torch.manual_seed(3)
    seen = set()
    with torch.no_grad():
        for _ in range(8):
            order = (parts[3], *parts[:3])  # diffusers calls proj_mlp first
            skipped = {torch.equal(p(x), p.base_layer(x)) for p in order}
            assert len(skipped) == 1  # the parts skip together
            seen |= skipped
    assert seen == {True, False}


def test_fused_module_dropout_under_gradient_checkpointing_trains_as_without(tmp_path):
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import make_plan

    runs = []
    for name, on in (("plain", "false"), ("checkpointed", "true")):
        extra = DROPPED + f"\n[precision]\ngradient_checkpointing = {on}\n"
        plan = make_plan(tmp_path / name, base=BASE, steps=3, extra=extra)
        runs.append(execute(plan, keep_models=True))
    plain, checkpointed = runs
    assert checkpointed.components.unet.gradient_checkpointing
    assert plain.losses == checkpointed.losses
    ours = dict(checkpointed.components.unet.named_parameters())
    trained = [(n, p) for n, p in plain.components.unet.named_parameters() if p.requires_grad]
    assert trained and all(torch.equal(p, ours[n]) for n, p in trained)


def test_tiny_sd_trains_and_resumes_with_each_layer_s_draw(tmp_path):
    """SD 1.x (train_network.py): every BOFT layer draws its own; a run's losses differ from the run without
    (the draws change the run) and it resumes bit-exact."""
    spec = '[adapter]\nkind = "boft"\nblock_size = 4\nrescaled = true\nmodule_dropout = {}\n'
    plan, whole = whole_and_resumed(tmp_path / "dropped", steps=3, extra=spec.format(RATE))
    assert plan.adapter.module_dropout == RATE and not plan.adapter.fused
    layers = [m for m in whole.components.unet.modules() if type(m).__name__ == "BoftLayer"]
    assert layers and all(m.boft_module_dropout == RATE and "boft_skip" not in m.__dict__ for m in layers)
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import make_plan

    without = execute(make_plan(tmp_path / "plain", steps=3, extra=spec.format(0.0)))
    assert without.losses != whole.losses
