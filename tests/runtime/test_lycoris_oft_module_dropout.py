"""lycoris.kohya algo=diag-oft with `module_dropout` on SD 1.x/2.x / SDXL (issue 12; was DBS403):
DiagOFTModule.forward draws `torch.rand(1) < module_dropout` from torch's global generator once per training
forward, first, and answers with its org_forward below the rate (runtime/mixed_kinds.py
add_own_module_dropout, each layer its own draw). Checked against lycoris-lora 4.1.3's DiagOFTModule:
training outputs equal from the same generator state and the generator left where it leaves it, in the
default and the bypass forward; a tiny SD run trains (its losses not the run's without) and resumes
bit-exact. Its `rank_dropout` (was DBS403): DiagOFTModule.make_weight's nn.Dropout on the (blocks, size,
size) rotations in the default forward (runtime/lycoris_oft.py add_oft_rank_dropout), checked alike, with
the gradients of the blocks and rescale; the bypass forward draws none, as LyCORIS's."""

from __future__ import annotations

import pytest
import torch
from peft import inject_adapter_in_model
from torch import nn

from dbspec.runtime.lycoris_oft import add_oft_rank_dropout, oft_config
from dbspec.runtime.mixed_kinds import add_own_module_dropout
from tests.runtime.runspec import whole_and_resumed

diag_oft = pytest.importorskip("lycoris.modules.diag_oft")

RATE = 0.5


@pytest.mark.parametrize(("bypass", "rank"), [(False, 0.0), (True, 0.0), (False, 0.3), (True, 0.3)])
def test_a_layer_draws_as_lycoris_module(bypass, rank):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16))
    inject_adapter_in_model(oft_config(["0"], 4, 0.0, True, bypass=bypass), model, adapter_name="default")
    assert add_own_module_dropout(model, RATE) == 1
    assert add_oft_rank_dropout(model, rank) == (not bypass)  # LyCORIS's bypass forward never reads it
    layer = model[0]
    with torch.no_grad():
        layer.lora_oft_blocks["default"].normal_(0, 0.2)
        layer.lora_oft_rescale["default"].uniform_(0.5, 1.5)
    theirs = diag_oft.DiagOFTModule(
        "own",
        nn.Linear(8, 16),
        1.0,
        lora_dim=4,
        rescaled=True,
        module_dropout=RATE,
        rank_dropout=rank,
        bypass_mode=bypass,
    )
    with torch.no_grad():
        theirs.org_module[0].weight.copy_(layer.base_layer.weight)
        theirs.org_module[0].bias.copy_(layer.base_layer.bias)
    theirs.load_state_dict(
        {
            "oft_blocks": layer.lora_oft_blocks["default"].detach().clone(),
            "rescale": layer.lora_oft_rescale["default"].detach().clone().view(theirs.rescale.shape),
            "alpha": torch.tensor(0.0),
        }
    )
    theirs.apply_to()
    theirs.org_module[0].requires_grad_(False)  # frozen, as peft leaves the base layer
    model.train(), theirs.train()
    x = torch.randn(5, 8)
    plain = layer.base_layer(x)
    torch.manual_seed(7)
    with torch.no_grad():
        expected = [theirs(x) for _ in range(8)]
    after = torch.get_rng_state()
    torch.manual_seed(7)
    with torch.no_grad():
        got = [layer(x) for _ in range(8)]
    assert torch.equal(after, torch.get_rng_state())  # one draw per forward
    skipped = 0
    for mine, want in zip(got, expected):
        torch.testing.assert_close(mine, want, rtol=0, atol=1e-5)
        assert torch.equal(mine, plain) == torch.equal(want, plain)
        skipped += torch.equal(mine, plain)
    assert 0 < skipped < 8  # both kinds of forward compared
    if rank and not bypass:  # a mask per forward: the outputs differ from the undropped rotation's
        model.eval()
        with torch.no_grad():
            full = layer(x)
        model.train()
        assert sum(not torch.allclose(m, full) and not torch.equal(m, plain) for m in got) == 8 - skipped
        _same_gradients(layer, theirs, x)
    model.eval()
    state = torch.get_rng_state()
    with torch.no_grad():
        layer(x)  # outside training: no draw
    assert torch.equal(state, torch.get_rng_state())


def _same_gradients(layer, theirs, x):
    """One training forward and backward of each from one generator state: the same blocks' and rescale's
    gradients (the dropped entries get none; a skipped forward none at all), the generator left alike."""
    trained = 0
    for seed in range(6):
        torch.manual_seed(seed)
        want = theirs(x)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        mine = layer(x)
        assert torch.equal(after, torch.get_rng_state()) and mine.requires_grad == want.requires_grad
        if want.requires_grad:
            want.square().sum().backward()
            mine.square().sum().backward()
            trained += 1
    assert trained
    blocks, rescale = layer.lora_oft_blocks["default"], layer.lora_oft_rescale["default"]
    torch.testing.assert_close(blocks.grad, theirs.oft_blocks.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rescale.grad.view(-1), theirs.rescale.grad.view(-1), rtol=1e-5, atol=1e-5)
    assert blocks.grad.abs().sum() > 0


def test_tiny_sd_trains_and_resumes_with_each_layer_s_draw(tmp_path):
    spec = (
        '[adapter]\nkind = "diag-oft"\nblock_size = 4\nrescaled = true\nmodule_dropout = {}\n'
        "rank_dropout = {}\n"
    )
    plan, whole = whole_and_resumed(tmp_path / "dropped", steps=3, extra=spec.format(RATE, 0.3))
    assert plan.adapter.module_dropout == RATE and not plan.adapter.fused
    assert plan.adapter.rank_dropout == 0.3
    layers = [m for m in whole.components.unet.modules() if type(m).__name__ == "DiagOftLayer"]
    assert layers and all("dbspec_skip" in m.__dict__ and m.oft_rank_dropout == 0.3 for m in layers)
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import make_plan

    without = execute(make_plan(tmp_path / "plain", steps=3, extra=spec.format(0.0, 0.0)))
    assert without.losses != whole.losses
