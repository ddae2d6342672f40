"""An IA^3 preset-file entry's own `train_on_input` on a LoCon network (issue 12; was DBS403): its block of
kind ia3's `on_input` (spec AdapterBlock; runtime/blocks.py builds those layers at peft's rank
INPUT_SIDE_RANK). lycoris-lora 4.1.3's create_single_module hands the entry's train_on_input to its IA3Module,
which then trains one scale per input channel (`weight` of the input's width, `on_input` 1): W ((1 + s) x) + b
in either forward, the default one as W (1 + s) on the weight's columns. Checked on tiny SD 1.x without a tiny
run: the plan's U-Net as runtime/prepare.py builds it (every trainable tensor moved at random) against
lycoris-lora's network from the same file holding its export (the IA^3 scales of the input's width, so the
load itself fails on the output side), with module_dropout, outside and in bypass_mode, over three training
forwards from one generator state: equal outputs, generator state after each, every IA^3 scale's gradient;
the feed-forwards' Linears and the ResNets' 3x3 and 1x1 convolutions alike."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import _inputs, lycoris_unet, same_draws
from tests.runtime.test_lycoris_rank_dropout_kinds import _layer_of

pytest.importorskip("lycoris.kohya")

MODULE = 0.1
# the network's LoCon on the transformers; the feed-forwards' and ResNets' IA^3 entries on their input side
PRESET = """unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = []
text_encoder_target_name = []

[module_algo_map.FeedForward]
algo = "ia3"
train_on_input = true
[module_algo_map.ResnetBlock2D]
algo = "ia3"
train_on_input = true
"""


@pytest.mark.parametrize("bypass", [False, True])
def test_ia3_entries_on_their_input_side_match_lycoris(pipe, tmp_path, monkeypatch, bypass):  # noqa: F811
    """A LoCon network with module_dropout (and bypass_mode): its IA^3 entries' layers scale their input
    channels as lycoris-lora's IA3Modules with train_on_input; the same outputs, draws and scale gradients."""
    args = f'"module_dropout={MODULE}"' + (' "bypass_mode=True"' if bypass else "")
    path, plan = _converted_plan(tmp_path, "ia3_input", "locon", args, text=PRESET)
    a = plan.adapter
    assert (a.kind, a.bypass, a.module_dropout) == ("lora", bypass, MODULE)
    ia3 = [b for b in a.blocks if b.kind == "ia3"]
    assert len(ia3) == 2 and all(b.on_input for b in ia3), a.blocks
    ours = _ours(pipe, plan)
    drops = {"module_dropout": str(MODULE), **({"bypass_mode": "True"} if bypass else {})}
    made, theirs = lycoris_unet(pipe, monkeypatch, "locon", path, **drops)
    modules = [m for m in made.unet_loras if type(m).__name__ == "IA3Module"]
    assert modules and all(m.train_input and int(m.on_input) == 1 for m in modules)
    assert {m.module_type for m in modules} == {"linear", "conv2d"}
    for m in modules:  # our layers: the input side, one scale per input channel
        layer = _layer_of(ours, m.lora_name)
        assert layer.on_input["default"] and layer.lora_ia3["default"].numel() == m.weight.numel()
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    assert all(int(state[f"{m.lora_name}.on_input"]) == 1 for m in modules)
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if not k.startswith("lora_te")]
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    ours.train(), theirs.train(), made.train()
    outputs = same_draws(ours, theirs, (latents, t, context), 3, backward=True)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)  # the draws move on
    checked = 0
    for module in modules:
        grad = _layer_of(ours, module.lora_name).lora_ia3["default"].grad
        expected = module.weight.grad
        if expected is None:  # dropped in all three forwards: ours too
            assert grad is None or not grad.any(), module.lora_name
            continue
        torch.testing.assert_close(
            grad.reshape(expected.shape), expected, rtol=1e-3, atol=1e-6, msg=module.lora_name
        )
        checked += 1
    assert checked > len(modules) // 2


def test_ia3_input_side_layer_matches_lycoris_module():
    """One Linear and one 3x3 convolution: our input-side Ia3Layer against IA3Module(train_on_input=True) on
    the same weights and scales, default and bypass forward: outputs, input and scale gradients."""
    from lycoris.modules.ia3 import IA3Module

    from dbspec.runtime.lycoris_ia3 import Ia3Layer

    torch.manual_seed(0)
    for base, shape in (
        (torch.nn.Linear(6, 10), (3, 5, 6)),
        (torch.nn.Conv2d(6, 10, 3, padding=1), (2, 6, 5, 5)),
    ):
        for bypass in (False, True):
            theirs_base = torch.nn.Module()
            theirs_base.layer = _copy(base)
            module = IA3Module("x", theirs_base.layer, 1.0, train_on_input=True, bypass_mode=bypass)
            module.apply_to()
            ours = Ia3Layer(_copy(base), "default", r=2, bypass=bypass)
            with torch.no_grad():
                module.weight.normal_(0, 0.3)
                ours.lora_ia3["default"].copy_(module.weight)
            x = torch.randn(*shape)
            xs = [x.clone().requires_grad_(True) for _ in range(2)]
            out_theirs, out_ours = theirs_base.layer(xs[0]), ours(xs[1])
            torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-5)
            out_theirs.square().sum().backward(), out_ours.square().sum().backward()
            torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(
                ours.lora_ia3["default"].grad, module.weight.grad, rtol=1e-4, atol=1e-5
            )


def _copy(layer):
    import copy

    return copy.deepcopy(layer)
