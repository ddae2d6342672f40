"""An IA^3 network's preset-file entries with their own `bypass_mode` on SD 1.x/2.x and SDXL (issue 12; was
DBS403): the ia3 adapter's own [[adapter.blocks]] `bypass` (spec ScaleBlock), set per layer by
runtime/mixed_kinds.py set_block_bypass. lycoris-lora 4.1.3's create_single_module hands an entry's own
bypass_mode to its IA3Module over the network's; its bypass forward scales the layer's output (bias included),
its default forward the weight (bias left as it is). Checked on tiny SD 1.x without a tiny run: the plan's
U-Net as runtime/prepare.py builds it (every trainable tensor moved at random) against lycoris-lora's network
from the same file holding its export, with module_dropout, over three training forwards from one generator
state: equal outputs, generator state after each, every IA^3 scale's gradient; CLIP's entries (the
text encoder's blocks) alike against lycoris-lora's text encoder modules, its biases at random."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import _inputs, lycoris_unet, same_draws
from tests.runtime.test_lycoris_rank_dropout_kinds import _layer_of

lycoris_kohya = pytest.importorskip("lycoris.kohya")

MODULE = 0.1
# the network's IA^3 on the transformers' and ResNets' layers; the feed-forwards' and conv_out's entries
# in the other bypass_mode (conv_out: its bias scaled in bypass_mode, left in the default forward)
PRESET = """enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_out"]
text_encoder_target_module = []
text_encoder_target_name = []

[module_algo_map.FeedForward]
algo = "ia3"
dim = 8
bypass_mode = {own}
[name_algo_map.conv_out]
algo = "ia3"
bypass_mode = {own}
"""


@pytest.mark.parametrize("network", [False, True])
def test_ia3_entries_in_their_own_bypass_mode(pipe, tmp_path, monkeypatch, network):  # noqa: F811
    """Outside bypass_mode with the entries in it, and the reverse: the entries' IA3Modules in their own
    mode, the network's in its; the same outputs, draws and scale gradients as lycoris-lora's network."""
    own = str(not network).lower()
    args = f'"module_dropout={MODULE}"' + (' "bypass_mode=True"' if network else "")
    path, plan = _converted_plan(tmp_path, "ia3_own", "ia3", args, text=PRESET.format(own=own))
    a = plan.adapter
    assert (a.kind, a.bypass, a.module_dropout) == ("ia3", network, MODULE)
    own_blocks = [b for b in a.blocks if b.rank and b.kind == "adapter"]
    assert own_blocks and {b.bypass for b in own_blocks} == {not network}, a.blocks
    ours = _ours(pipe, plan)
    drops = {"module_dropout": str(MODULE), **({"bypass_mode": "True"} if network else {})}
    made, theirs = lycoris_unet(pipe, monkeypatch, "ia3", path, **drops)
    modes = {}
    for m in made.unet_loras:
        assert type(m).__name__ == "IA3Module"
        modes.setdefault(bool(m.bypass_mode), set()).add(m.lora_name)
    assert set(modes) == {False, True}  # both modes built
    assert any("conv_out" in name for name in modes[not network])
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if not k.startswith("lora_te")]
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    ours.train(), theirs.train(), made.train()
    outputs = same_draws(ours, theirs, (latents, t, context), 3, backward=True)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)  # the draws move on
    checked = 0
    for module in made.unet_loras:
        grad = _layer_of(ours, module.lora_name).lora_ia3["default"].grad
        expected = module.weight.grad
        if expected is None:  # dropped in all three forwards: ours too
            assert grad is None or not grad.any(), module.lora_name
            continue
        torch.testing.assert_close(
            grad.reshape(expected.shape), expected, rtol=1e-3, atol=1e-6, msg=module.lora_name
        )
        checked += 1
    assert checked > len(made.unet_loras) // 2


CLIP_PRESET = """unet_target_module = []
unet_target_name = ["conv_out"]
text_encoder_target_module = ["CLIPEncoderLayer"]
text_encoder_target_name = []

[module_algo_map.CLIPAttention]
algo = "ia3"
bypass_mode = true
"""


def test_ia3_clip_entries_in_their_own_bypass_mode(pipe, tmp_path, monkeypatch):  # noqa: F811
    """CLIP's attention entries in bypass_mode beside the network's IA^3 MLPs outside it (the text encoder's
    blocks, runtime/mixed_kinds.py set_block_bypass with its component): CLIP's outputs, draws and IA^3
    scales' gradients equal lycoris-lora's text encoder modules'."""
    import copy
    import types

    from torch import nn

    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.prepare import _prepare, text_targets
    from tests.runtime.lycoris_sd_file_kit import kohya_layers

    path, plan = _converted_plan(tmp_path, "ia3_clip", "ia3", f'"module_dropout={MODULE}"', text=CLIP_PRESET)
    a = plan.adapter
    assert [(b.kind, b.bypass) for b in a.text_encoder_blocks if b.rank] == [("adapter", True)]
    base = copy.deepcopy(pipe.text_encoder)  # the tiny CLIP's biases at random (bypass_mode scales them)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    clip = copy.deepcopy(base)
    _prepare(clip, "text_encoder", plan, torch.device("cpu"), text_targets(a, "text_encoder"), 0)
    with torch.no_grad():
        for p in clip.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    kept_lycoris_presets(monkeypatch)
    named, unet = nn.Module(), copy.deepcopy(pipe.unet)
    named.text_model = copy.deepcopy(base)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo="ia3", preset=str(path), module_dropout=str(MODULE)
    )
    made.apply_to(named, unet, True, False)
    modes = {m.lora_name: bool(m.bypass_mode) for m in made.text_encoder_loras}
    assert set(modes.values()) == {False, True}
    assert all(v == ("_self_attn_" in k) for k, v in modes.items()), modes
    comps = types.SimpleNamespace(unet=None, text_encoders=[clip])
    layers = kohya_layers(comps, Ia3Layer, adapter=True)
    assert sorted(layers) == sorted(modes)
    state = lycoris_state(unet=None, text_encoders=[clip], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if k.startswith("lora_te")]
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 7), generator=g)
    clip.train(), named.train(), made.train()
    torch.manual_seed(11)
    outputs = []
    for step in range(3):
        before = torch.get_rng_state()
        mine = clip(ids)[0]
        after = torch.get_rng_state()
        torch.set_rng_state(before)
        other = named.text_model(ids)[0]
        assert torch.equal(torch.get_rng_state(), after), f"forward {step}: the generator's state differs"
        torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-5, msg=f"forward {step}")
        mine.square().mean().backward(), other.square().mean().backward()
        outputs.append(mine.detach())
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)
    for module in made.text_encoder_loras:
        grad, expected = layers[module.lora_name].lora_ia3["default"].grad, module.weight.grad
        if expected is None:
            assert grad is None or not grad.any(), module.lora_name
            continue
        torch.testing.assert_close(
            grad.reshape(expected.shape), expected, rtol=1e-3, atol=1e-6, msg=module.lora_name
        )
