"""An IA^3 preset-file entry's own `train_on_input` on a LoCon network (issue 12; was DBS403): its block of
kind ia3's `on_input` (spec AdapterBlock / TextEncoderBlock; runtime/blocks.py builds those layers at peft's
rank INPUT_SIDE_RANK). lycoris-lora 4.1.3's create_single_module hands the entry's train_on_input to its
IA3Module, which then trains one scale per input channel (`weight` of the input's width, `on_input` 1):
W ((1 + s) x) + b in either forward, the default one as W (1 + s) on the weight's columns. Checked without a
tiny run against lycoris-lora's network from the same file holding our export (the scales of the input's
width, so the load itself fails on the output side), with module_dropout, from one generator state: outputs,
generator state, every IA^3 scale's gradient; on tiny SD 1.x the U-Net (feed-forward Linears, ResNet 3x3 and
1x1 convolutions; outside and in bypass_mode) and CLIP's MLPs; on tiny Flux and SD3 each kohya layer (the
fused q/k/v, Flux's linear1, whose parts share one input-side scale, and a plain out-projection) with input
gradients too. Also one layer against IA3Module itself, and a LyCORIS file's input-side scale loading whole
into every part (runtime/lycoris_whole_init.py)."""

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

pytest.importorskip("lycoris.kohya")

MODULE = 0.1
DROP = 0.3  # the fused layers' check: six forwards from one seed see both the skip and the scales
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
    ia3_scale_grads_alike(ours, modules)


def ia3_scale_grads_alike(ours, modules) -> None:
    """Each of LyCORIS's IA3Modules' scale gradients equal to our layer's (a layer dropped in every forward
    has none on either side); most of them must have one."""
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


CLIP_PRESET = """unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPEncoderLayer"]
text_encoder_target_name = []

[module_algo_map.CLIPMLP]
algo = "ia3"
train_on_input = true
"""


def test_ia3_clip_entries_on_their_input_side(pipe, tmp_path, monkeypatch):  # noqa: F811
    """CLIP's MLP entries on their input side beside the network's LoCon attention (the text encoder's blocks,
    TextEncoderBlock `on_input`): CLIP's outputs, draws and IA^3 scales' gradients equal lycoris-lora's text
    encoder modules' with train_on_input, our export loaded."""
    import copy
    import types

    from torch import nn

    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.prepare import _prepare, text_targets
    from tests.runtime.lycoris_sd_file_kit import kohya_layers

    lycoris_kohya = pytest.importorskip("lycoris.kohya")
    path, plan = _converted_plan(tmp_path, "ia3_clip", "locon", f'"module_dropout={DROP}"', text=CLIP_PRESET)
    a = plan.adapter
    assert [(b.kind, b.on_input) for b in a.text_encoder_blocks if b.rank] == [("ia3", True)]
    g = torch.Generator().manual_seed(3)
    clip = copy.deepcopy(pipe.text_encoder)
    _prepare(clip, "text_encoder", plan, torch.device("cpu"), text_targets(a, "text_encoder"), 0)
    with torch.no_grad():
        for p in clip.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    kept_lycoris_presets(monkeypatch)
    named, unet = nn.Module(), copy.deepcopy(pipe.unet)
    named.text_model = copy.deepcopy(pipe.text_encoder)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo="locon", preset=str(path), module_dropout=str(DROP)
    )
    made.apply_to(named, unet, True, False)
    ia3 = {m.lora_name: m for m in made.text_encoder_loras if type(m).__name__ == "IA3Module"}
    assert ia3 and all(m.train_input for m in ia3.values())
    layers = kohya_layers(types.SimpleNamespace(unet=None, text_encoders=[clip]), Ia3Layer, adapter=True)
    assert sorted(layers) == sorted(ia3)
    state = lycoris_state(unet=None, text_encoders=[clip], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if k.startswith("lora_te")]
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 7), generator=g)
    clip.train(), named.train(), made.train()
    torch.manual_seed(11)
    for step in range(3):
        before = torch.get_rng_state()
        mine = clip(ids)[0]
        after = torch.get_rng_state()
        torch.set_rng_state(before)
        other = named.text_model(ids)[0]
        assert torch.equal(torch.get_rng_state(), after), f"forward {step}: the generator's state differs"
        torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-5, msg=f"forward {step}")
        mine.square().mean().backward(), other.square().mean().backward()
    checked = 0
    for name, module in ia3.items():
        grad, expected = layers[name].lora_ia3["default"].grad, module.weight.grad
        if expected is None:
            assert grad is None or not grad.any(), name
            continue
        torch.testing.assert_close(grad.reshape(expected.shape), expected, rtol=1e-3, atol=1e-6, msg=name)
        checked += 1
    assert checked > len(ia3) // 2


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


# Flux / SD3: a LoCon network whose IA^3 entries on fused Linears (and a plain one) scale their input side
FLUX_PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "ia3"
train_on_input = true
[name_algo_map."single_blocks.*.linear1"]
algo = "ia3"
train_on_input = true
[name_algo_map."double_blocks.*.txt_attn.proj"]
algo = "ia3"
train_on_input = true
"""
SD3_PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj"]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "ia3"
train_on_input = true
[name_algo_map."joint_blocks.*.x_block.attn.proj"]
algo = "ia3"
train_on_input = true
"""


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("bypass", [False, True])
def test_ia3_entries_on_their_input_side_on_fused_layers(tmp_path, monkeypatch, family, bypass):
    """A LoCon network with module_dropout (and bypass_mode) whose IA^3 entries' own train_on_input reach
    fused q/k/v (Flux's linear1 too) and a plain out-projection: each fused Linear's parts share one
    input-side scale (runtime/lycoris_ia3.py tie_fused_ia3_inputs); the prepared transformer's layers against
    lycoris-lora 4.1.3's network from the same file on kohya's stacked Linears holding our export (one
    scale of the input's width per fused Linear, `on_input` 1), in training from one generator state:
    outputs, input gradients, generator state and each IA3Module's scale gradient (the parts' shared one)."""
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.test_lycoris_flow_rank_dropout_layers import (
        FLUX,
        SD3,
        _network,
        _plan,
        _prepared,
        _same_training,
    )
    from tests.runtime.test_lycoris_mixed_flow_full import _base, _kohya_layers, _kohya_tree

    script, preset, rows, parts_of = {
        "flux": (FLUX, FLUX_PRESET, flux_model(1, 1), diffusers_parts),
        "sd3": (SD3, SD3_PRESET, mmdit(2, ()), sd3_parts),
    }[family]
    args = {"algo": "locon", "module_dropout": str(DROP), **({"bypass_mode": "True"} if bypass else {})}
    plan = _plan(tmp_path, family, script, preset, args)
    a = plan.adapter
    assert (a.kind, a.bypass, a.module_dropout) == ("lora", bypass, DROP) and a.fused
    ia3 = [b for b in a.blocks if b.kind == "ia3"]
    assert ia3 and all(b.on_input for b in ia3), a.blocks
    ours = _prepared(
        build_pipeline(f"builtin:tiny-{family}").transformer.float(), "unet", plan, a.denoiser_targets
    )
    tensors = lycoris_state(unet=ours, text_encoders=[], family=family, dtype="fp32")
    layers = _kohya_layers(ours, rows, parts_of)
    drops = {k: v for k, v in args.items() if k != "algo"}
    made = _network(
        monkeypatch, "locon", tmp_path / "p.toml", [torch.nn.Module()] * 3, _kohya_tree(layers), drops
    )
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    theirs = {m.lora_name: m for m in made.unet_loras}
    singles = {id(b.proj_mlp) for b in getattr(ours, "single_transformer_blocks", ())}
    ours.train()
    fused, skipped, kinds = 0, [], set()
    for path, (parts, order) in layers.items():
        module = theirs.get("lora_unet_" + path.replace(".", "_"))
        if module is None:
            continue
        kinds.add(type(module).__name__)
        calls = sorted(parts, key=lambda p: id(p) not in singles)  # diffusers calls proj_mlp first

        def stacked(x, parts=parts, calls=calls, order=order):
            got = {id(p): p(x) for p in calls}
            out = torch.cat([got[id(p)] for p in parts], dim=-1)
            return out if order is None else out[..., order]

        x = torch.randn(3, _base(parts[0]).in_features)
        _same_training(module.train(), stacked, x, path)
        if type(module).__name__ != "IA3Module":
            continue
        assert module.train_input and all(isinstance(p, Ia3Layer) for p in parts), path
        shared = {id(p.lora_ia3["default"]) for p in parts}
        assert len(shared) == 1, path  # one scale per fused Linear
        fused += len(parts) > 1
        grad = parts[0].lora_ia3["default"].grad
        torch.testing.assert_close(grad, module.weight.grad, rtol=1e-4, atol=1e-5, msg=path)
        torch.manual_seed(11)  # _same_training's draws: which forwards skipped the scales
        with torch.no_grad():
            plain = module.org_forward(x)
            skipped += [torch.equal(module(x), plain) for _ in range(6)]
    assert kinds == {"IA3Module", "LoConModule"} and fused >= 2
    assert any(skipped) and not all(skipped)  # both the module_dropout's skip and the scales seen


def test_input_side_scales_load_from_a_lycoris_file_into_every_part():
    """A LyCORIS file's input-side IA^3 `weight` (one scale per input column) loads whole into each part of
    a fused Linear (runtime/lycoris_whole_init.py: no row split) and, on a Linear whose rows kohya holds
    swapped (SD3's last context modulation), unswapped: the columns are the same either way."""
    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.lycoris_whole_init import _slots

    parts = [Ia3Layer(torch.nn.Linear(6, n), "default", r=2) for n in (4, 4, 8)]
    for p in parts[1:]:
        p.lora_ia3["default"] = parts[0].lora_ia3["default"]  # tied, as tie_fused_ia3_inputs ties them
    value = torch.arange(6, dtype=torch.float32)
    for rows, swapped in (
        ([(p, p.get_base_layer()) for p in parts], False),
        ([(parts[2], parts[2].base_layer)], True),
    ):
        slots = _slots(rows, "default", swapped)
        shape, copy = slots["weight"]
        assert shape == (6,)
        with torch.no_grad():
            copy(value)
        assert all(torch.equal(p.lora_ia3["default"], value) for p, _ in rows)
        slots["on_input"][1](torch.tensor(1))
        with pytest.raises(ValueError, match="on_input"):
            slots["on_input"][1](torch.tensor(0))
