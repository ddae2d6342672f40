"""An IA^3 preset-file entry's own `train_on_input` on an IA^3, full, GLoRA or DyLoRA network (issue 12; was
DBS403): an IA^3 network's own block's `on_input` (spec ScaleBlock), the others' block of kind ia3's (spec
ScaleBlock, GloraBlock, DyloraBlock); runtime/mixed_kinds.py kind_adapter hands it to runtime/blocks.py, which
builds those layers at peft's rank INPUT_SIDE_RANK. lycoris-lora 4.1.3's create_single_module hands the
entry's train_on_input to its IA3Module whatever the network's algorithm: one scale per input channel,
W ((1 + s) x) + b. The plan's U-Net built by runtime/prepare.py and lycoris-lora's network from the same file
on tiny SD 1.x holding our export (the input-side scales of the input's width: the load fails on the output
side; DyLoRA's blocks copied, its draw fixed to the last block as ours): training-mode outputs (with
module_dropout where the network's classes draw it), the generator state after each forward and every IA^3
scale's gradient equal; on CLIP's MLPs (the text encoder's blocks, TextEncoderBlock `on_input`) alike. The
layer math against IA3Module itself: test_lycoris_ia3_entry_sides.py."""

from __future__ import annotations

import random

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
from tests.runtime.test_lycoris_rank_dropout_kinds import _layer_of, _same_dylora_blocks
from tests.runtime.test_lycoris_ia3_entry_sides import CLIP_PRESET, ia3_scale_grads_alike
from tests.runtime.test_lycoris_tlora import _no_gc

pytest.importorskip("lycoris.kohya")

MODULE = 0.1
# the network's algorithm on the transformers' attention; the feed-forwards' and ResNets' IA^3 entries on
# their input side (Linears, 3x3 and 1x1 convolutions)
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


@pytest.mark.parametrize(
    ("algo", "rate", "bypass"),
    [
        ("ia3", MODULE, False),
        ("ia3", MODULE, True),
        ("glora", MODULE, False),
        ("tlora", MODULE, False),
        ("full", 0.0, False),
        ("dylora", 0.0, False),
    ],
)
def test_ia3_entries_on_their_input_side_beside_other_networks(
    pipe,  # noqa: F811
    tmp_path,
    monkeypatch,
    algo,
    rate,
    bypass,
):
    """IA^3, GLoRA and T-LoRA networks with module_dropout, full and DyLoRA ones without: the entries' layers
    scale their input channels as lycoris-lora's IA3Modules with train_on_input, the network's own layers as
    its modules; the same outputs, draws and IA^3 scale gradients (the IA^3 network in bypass_mode too). A
    T-LoRA network's on the transformers alone (its blocks of other kinds take no k x k convolution,
    DBS403)."""
    drops = {**({"module_dropout": str(rate)} if rate else {}), **({"bypass_mode": "True"} if bypass else {})}
    args = " ".join(f'"{k}={v}"' for k, v in drops.items())
    preset = PRESET
    _no_gc(monkeypatch)  # TLoraModule's gc.collect() per module
    if algo == "tlora":  # the transformers alone (a T-LoRA network's blocks of other kinds: no k x k one)
        preset = PRESET.replace(', "ResnetBlock2D"]', "]").split("[module_algo_map.ResnetBlock2D]")[0]
    path, plan = _converted_plan(tmp_path, f"ia3_input_{algo}", algo, args, text=preset)
    a = plan.adapter
    assert (a.kind, a.module_dropout, a.bypass) == (algo, rate, bypass)
    entries = [b for b in a.blocks if b.on_input]
    assert len(entries) == (1 if algo == "tlora" else 2), a.blocks
    assert {b.kind for b in entries} == {"adapter" if algo == "ia3" else "ia3"}
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **drops)
    modules = [m for m in made.unet_loras if type(m).__name__ == "IA3Module"]
    assert all(bool(m.bypass_mode) == bypass for m in modules)
    inputs = [m for m in modules if m.train_input]
    assert inputs and {m.module_type for m in inputs} == (
        {"linear"} if algo == "tlora" else {"linear", "conv2d"}
    )
    assert all(int(m.on_input) == 1 for m in inputs)
    for m in modules:  # our layers: the entries' on the input side, an IA^3 network's own on the output's
        layer = _layer_of(ours, m.lora_name)
        assert layer.on_input["default"] == m.train_input, m.lora_name
        assert layer.lora_ia3["default"].numel() == m.weight.numel(), m.lora_name
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    assert all(int(state[f"{m.lora_name}.on_input"]) == int(m.train_input) for m in modules)
    result = made.load_state_dict(state, strict=False)
    dylora = {m.lora_name for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    # DyLoRA layers export kohya's lora_down / lora_up, which DyLoraModule does not hold
    assert {k.split(".")[0] for k in result.unexpected_keys} <= dylora
    # TLoraModule's frozen start (base_*), which it builds from the same weight's SVD and never loads
    missing = [k for k in result.missing_keys if not k.startswith("lora_te") and ".base_" not in k]
    assert {k.split(".")[0] for k in missing} <= dylora
    assert _same_dylora_blocks(ours, made) == len(dylora) and (algo == "dylora") == bool(dylora)
    monkeypatch.setattr(random, "randint", lambda lo, hi: hi)  # DyLoraModule's draw: the last block
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    ours.train(), theirs.train(), made.train()
    same_draws(ours, theirs, (latents, t, context), 3, backward=True)
    ia3_scale_grads_alike(ours, modules)


@pytest.mark.parametrize("algo", ["ia3", "glora", "tlora", "full", "dylora"])
def test_ia3_clip_entries_on_their_input_side_beside_other_networks(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """CLIP's MLP entries on their input side beside the network's attention (the text encoder's blocks,
    TextEncoderBlock `on_input`): CLIP's outputs and the IA^3 scales' gradients equal lycoris-lora's text
    encoder modules' with train_on_input, our export loaded (DyLoRA's blocks copied, its draw the last)."""
    import copy
    import types

    from torch import nn

    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.prepare import _prepare, text_targets
    from tests.runtime.lycoris_sd_file_kit import kohya_layers

    lycoris_kohya = pytest.importorskip("lycoris.kohya")
    _no_gc(monkeypatch)
    path, plan = _converted_plan(tmp_path, f"ia3_clip_{algo}", algo, text=CLIP_PRESET)
    a = plan.adapter
    entries = [(b.kind, b.on_input) for b in a.text_encoder_blocks if b.on_input]
    assert entries == [("adapter" if algo == "ia3" else "ia3", True)], a.text_encoder_blocks
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
    made = lycoris_kohya.create_network(1.0, 4, 1.0, None, named, unet, algo=algo, preset=str(path))
    made.apply_to(named, unet, True, False)
    ia3 = {m.lora_name: m for m in made.text_encoder_loras if type(m).__name__ == "IA3Module"}
    assert ia3 and all(m.train_input for m in ia3.values()) == (algo != "ia3")
    assert any(m.train_input for m in ia3.values())
    ours = types.SimpleNamespace(unet=None, text_encoders=[clip])
    layers = kohya_layers(ours, Ia3Layer, adapter=True)
    assert sorted(layers) == sorted(ia3)
    assert all(layers[name].on_input["default"] == m.train_input for name, m in ia3.items())
    state = lycoris_state(unet=None, text_encoders=[clip], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    dylora = [m for m in made.text_encoder_loras if type(m).__name__ == "DyLoraModule"]
    dropped = {m.lora_name for m in dylora}  # DyLoraModule holds no lora_down / lora_up
    assert {k.split(".")[0] for k in result.unexpected_keys} <= dropped
    missing = [k for k in result.missing_keys if k.startswith("lora_te") and ".base_" not in k]  # T-LoRA's
    assert {k.split(".")[0] for k in missing} <= dropped
    blocks = kohya_layers(ours, DyloraLayer, adapter=True)
    assert sorted(blocks) == sorted(m.lora_name for m in dylora)
    for module in dylora:  # our blocks into LyCORIS's, both draws the last block
        layer = blocks[module.lora_name]
        with torch.no_grad():
            for mine, theirs in zip(layer.lora_dylora_down["default"], module.down_list):
                theirs.copy_(mine.flatten(1))
            for mine, theirs in zip(layer.lora_dylora_up["default"], module.up_list):
                theirs.copy_(mine.flatten(1))
        layer.drawn["default"] = module.block_count - 1
    assert bool(dylora) == (algo == "dylora")
    monkeypatch.setattr(random, "randint", lambda lo, hi: hi)
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 7), generator=g)
    clip.train(), named.train(), made.train()
    mine, other = clip(ids)[0], named.text_model(ids)[0]
    torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-5)
    mine.square().mean().backward(), other.square().mean().backward()
    for name, module in ia3.items():
        grad, expected = layers[name].lora_ia3["default"].grad, module.weight.grad
        torch.testing.assert_close(grad.reshape(expected.shape), expected, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("algo", ["ia3", "glora", "tlora", "full", "dylora"])
def test_ia3_entries_on_their_input_side_on_fused_layers_beside_other_networks(
    tmp_path, monkeypatch, family, algo
):
    """IA^3, GLoRA, T-LoRA, full and DyLoRA networks with module_dropout on Flux / SD3 whose IA^3 entries' own
    train_on_input reach fused q/k/v (Flux's linear1 too) and a plain out-projection: each fused Linear's
    parts share one input-side scale (runtime/prepare.py _tie_fused_kinds, or own_input_side for the IA^3
    network's own blocks, with its fused_projections; runtime/lycoris_ia3.py tie_fused_ia3_inputs, as beside
    LoCon); the prepared transformer's layers against lycoris-lora 4.1.3's
    network from the same file on kohya's stacked Linears holding our export, in training from one
    generator state: outputs, input gradients, generator state and each IA3Module's scale gradient (the
    parts' shared one); the network's own modules alike but DyLoRA's (its draw, python's random.randint per
    forward, is ours per step: tests/runtime/test_lycoris_mixed_flow_dylora.py)."""
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
    from tests.runtime.test_lycoris_ia3_entry_sides import DROP, FLUX_PRESET, SD3_PRESET
    from tests.runtime.test_lycoris_mixed_flow_full import _base, _kohya_layers, _kohya_tree

    script, preset, rows, parts_of = {
        "flux": (FLUX, FLUX_PRESET, flux_model(1, 1), diffusers_parts),
        "sd3": (SD3, SD3_PRESET, mmdit(2, ()), sd3_parts),
    }[family]
    args = {"algo": algo, "module_dropout": str(DROP)}
    _no_gc(monkeypatch)
    plan = _plan(tmp_path, family, script, preset, args)
    a = plan.adapter
    assert (a.kind, a.module_dropout) == (algo, DROP) and a.fused
    ia3 = [b for b in a.blocks if b.kind == ("adapter" if algo == "ia3" else "ia3")]
    assert ia3 and all(b.on_input for b in ia3), a.blocks
    ours = _prepared(
        build_pipeline(f"builtin:tiny-{family}").transformer.float(), "unet", plan, a.denoiser_targets
    )
    tensors = lycoris_state(unet=ours, text_encoders=[], family=family, dtype="fp32")
    layers = _kohya_layers(ours, rows, parts_of)
    drops = {k: v for k, v in args.items() if k != "algo"}
    made = _network(
        monkeypatch, algo, tmp_path / "p.toml", [torch.nn.Module()] * 3, _kohya_tree(layers), drops
    )
    result = made.load_state_dict(tensors, strict=False)
    dylora = {m.lora_name for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    missing = [k for k in result.missing_keys if ".base_" not in k]  # TLoraModule's frozen start
    assert {k.split(".")[0] for k in (*result.unexpected_keys, *missing)} <= dylora, result
    theirs = {m.lora_name: m for m in made.unet_loras}
    singles = {id(b.proj_mlp) for b in getattr(ours, "single_transformer_blocks", ())}
    ours.train()
    fused, kinds = 0, set()
    for path, (parts, order) in layers.items():
        module = theirs.get("lora_unet_" + path.replace(".", "_"))
        if module is None or type(module).__name__ == "DyLoraModule":
            continue
        kinds.add(type(module).__name__)
        calls = sorted(parts, key=lambda p: id(p) not in singles)  # diffusers calls proj_mlp first

        def stacked(x, parts=parts, calls=calls, order=order):
            got = {id(p): p(x) for p in calls}
            out = torch.cat([got[id(p)] for p in parts], dim=-1)
            return out if order is None else out[..., order]

        x = torch.randn(3, _base(parts[0]).in_features)
        _same_training(module.train(), stacked, x, path)
        if type(module).__name__ != "IA3Module" or not module.train_input:  # an IA^3 network's own: outputs
            continue
        assert all(isinstance(p, Ia3Layer) for p in parts), path
        assert len({id(p.lora_ia3["default"]) for p in parts}) == 1, path  # one scale per fused Linear
        fused += len(parts) > 1
        grad = parts[0].lora_ia3["default"].grad
        torch.testing.assert_close(grad, module.weight.grad, rtol=1e-4, atol=1e-5, msg=path)
    own = {"glora": {"GLoRAModule"}, "tlora": {"TLoraModule"}, "full": {"FullModule"}}.get(algo, set())
    assert kinds == {"IA3Module", *own} and fused >= 2


def test_ia3_network_own_input_side_trains_on_fused_layers_and_lycoris_loads_the_export(tmp_path):
    """The tiny run (2 steps) of what an IA^3 network's own entries with train_on_input on kohya's Flux
    convert to (their blocks' `on_input`, fused_projections): each fused Linear's parts train one shared
    input-side scale (runtime/prepare.py own_input_side), and the kohya_lora export, one `weight` of the
    input's width with `on_input` 1 per fused Linear, is what lycoris-lora's IA3Module(train_on_input=True)
    on the stacked Linear computes (the output-side modules beside it alike)."""
    from lycoris.modules.ia3 import IA3Module

    from dbspec.runtime.execute import execute
    from tests.runtime.lycoris_flow_kit import (
        BASE,
        assert_lycoris_computes,
        kohya_export,
        stacked_linear,
        unet_only_spec,
    )
    from tests.runtime.runspec import make_plan

    # the img q/k/v of double block 0 and single block 0's linear1 parts (TOML literal strings: regexes)
    entries = r"""
[[adapter.blocks]]
pattern = '(?:^|\.)transformer_blocks\.0\.attn\.to_[qkv]$'
on_input = true

[[adapter.blocks]]
pattern = 'single_transformer_blocks\.0\.(?:attn\.to_[qkv]|proj_mlp)$'
on_input = true
"""
    plan = make_plan(
        tmp_path,
        base=BASE,
        steps=2,
        extra=unet_only_spec('kind = "ia3"\nfused_projections = true\n') + entries,
    )
    assert [b.on_input for b in plan.adapter.blocks] == [True, True] and plan.adapter.fused
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    tensors, names = kohya_export(plan, whole)
    inputs = {n for n in names if f"{n}.on_input" in tensors and int(tensors[f"{n}.on_input"])}
    assert inputs == {"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"}

    def theirs(name: str, parts) -> IA3Module:
        module = IA3Module(name, stacked_linear(parts), 1.0, train_on_input=name in inputs)
        module.load_state_dict(
            {k.removeprefix(name + "."): v for k, v in tensors.items() if k.startswith(name + ".")}
        )
        module.apply_to()
        return module.eval()

    assert_lycoris_computes(whole.components.unet, theirs)
