"""The network's `dropout` in bypass_mode on a LoRA/LoCon, LoHa or LoKr network whose preset file gives
kohya's Flux layers entries of the other two of those algorithms (issue 12; was DBS403, a spec's DBS578 with
`fused_projections`): lycoris-lora 4.1.3's LoConModule, LohaModule and LokrModule each end their
bypass_forward_diff in torch's Dropout of their own update x scalar, after their module_dropout
`torch.rand(1)`, and a fused Linear (q/k/v, linear1) is ONE module: one Dropout mask over its stacked
output, which diffusers' parts of it share, each its rows (runtime/fused_dropout.py for LoRA parts,
fused_lycoris_dropout.py add_fused_lycoris_dropout for LoHa / LoKr parts; the other LoHa / LoKr layers a draw
of their own, add_lycoris_layer_dropout, after the fused wrapping). No tiny run: the plan's layers as the
run builds them (random adapter weights, shared.moved_components), exported into lycoris-lora's network from
the same file on kohya's stacked Linears, then every kohya layer's module against the parts in training
from the same generator state over a few forwards: outputs stacked in kohya's rows, the generator left where
the parts leave it, the input's gradients and every trained tensor's gradient (by the name LyCORIS saves
it under); CLIP-L's layers alike. SD3's and Chroma's fused Linears take the same path: one network each."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts
from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.shared import moved_components
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    _base,
    _kohya_layers,
    _kohya_tree,
    _lycoris_network,
)
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

pytest.importorskip("lycoris.kohya")

DROPOUT, MODULE = 0.3, 0.2
_CLASS = {"lokr": "LokrModule", "locon": "LoConModule", "loha": "LohaModule"}

# the image stream's q/k/v QKV, the single blocks' linear1 and CLIP-L's attention LINEAR1, the network's
# algorithm on the text stream's q/k/v and the out projections
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "QKV"
[name_algo_map."single_blocks.*.linear1"]
algo = "LINEAR1"
dim = 2
alpha = 1
[module_algo_map.CLIPAttention]
algo = "LINEAR1"
"""


def _call_order(parts: list[nn.Module], transformer: nn.Module) -> list[nn.Module]:
    """diffusers' order of the parts' calls: a single block's proj_mlp (kohya's last rows) first."""
    mlps = {id(b.proj_mlp) for b in getattr(transformer, "single_transformer_blocks", ())}
    return sorted(parts, key=lambda p: id(p) not in mlps)


def _drawn_alike(module: nn.Module, parts: list[nn.Module], order: list[nn.Module], x: torch.Tensor) -> int:
    """lycoris-lora's `module` on kohya's Linear and the diffusers `parts` (called in `order`) in training
    from one generator state over six forwards and backwards: outputs, input gradients and the generator state
    after equal; how many distinct outputs (the draws differ per forward)."""
    torch.manual_seed(11)
    want = []
    for _ in range(6):
        xi = x.clone().requires_grad_(True)
        out = module(xi)
        out.pow(2).sum().backward()
        want.append((out.detach(), xi.grad))
    after = torch.get_rng_state()
    torch.manual_seed(11)
    seen = set()
    for expected, expected_grad in want:
        xi = x.clone().requires_grad_(True)
        got = {id(p): p(xi) for p in order}
        out = torch.cat([got[id(p)] for p in parts], dim=-1)
        out.pow(2).sum().backward()
        torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xi.grad, expected_grad, rtol=1e-4, atol=1e-5)
        seen.add(tuple(out.detach().flatten()[:6].tolist()))
    assert torch.equal(after, torch.get_rng_state())  # the same draws in the same order
    return len(seen)


def _grads_as_lycoris(unet, encoders: list, made: dict[str, nn.Module], family: str) -> int:
    """Every trained tensor's gradient (the parts' exported in kohya's rows, as lycoris_state writes the
    weights) equals lycoris-lora's module's; how many compared."""
    grads = {
        f"{n}.{k}": v.grad for n, m in made.items() for k, v in m.named_parameters() if v.grad is not None
    }
    for model in (unet, *encoders):
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    ours = lycoris_state(unet=unet, text_encoders=encoders, family=family, dtype="fp32")
    compared = 0
    for key, value in ours.items():
        if key in grads:
            torch.testing.assert_close(value, grads[key].reshape(value.shape), rtol=1e-4, atol=1e-6, msg=key)
            compared += 1
    return compared


@pytest.mark.parametrize(
    ("algo", "qkv", "linear1", "ranks"),
    [
        ("lokr", "locon", "loha", 0.0),
        ("locon", "lokr", "loha", 0.0),
        ("loha", "locon", "lokr", 0.0),
        # a LoCon network's rank_dropout beside it (rules.mixed_bypass_ranks): LoConModule's bypass masks the
        # fused down's ranks, the fused LohaModule its stacked rows, LokrModule none
        ("locon", "lokr", "loha", 0.25),
        ("loha", "locon", "lokr", 0.25),  # a LoHa network's: its LoCon blocks in the bypass form
    ],
)
def test_flux_bypass_dropout_beside_other_algorithms_is_lycoris(
    tmp_path, monkeypatch, algo, qkv, linear1, ranks
):
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE.replace("QKV", qkv).replace("LINEAR1", linear1), encoding="utf-8")
    drops = {"bypass_mode": "True", "dropout": str(DROPOUT), "module_dropout": str(MODULE)}
    drops.update({"rank_dropout": str(ranks)} if ranks else {})
    given = " ".join(f'"{k}={v}"' for k, v in drops.items())
    plan = plan_of(
        flux_lycoris(tmp_path, f'"algo={algo}" "preset={file.name}" {given}'),
        tmp_path,
        ["model.base=builtin:tiny-flux", *_BASE],
    )
    a = plan.adapter
    assert (a.output_dropout, a.module_dropout, a.rank_dropout, a.dora) == (DROPOUT, MODULE, ranks, False)
    assert a.rank_dropout_form == ("lycoris_bypass" if ranks else "kohya")  # its LoRA layers' rule
    kind = {"locon": "lora"}
    assert a.fused and a.kind == kind.get(algo, algo)
    assert {b.kind for b in a.blocks} == {kind.get(qkv, qkv), kind.get(linear1, linear1)}
    assert {b.kind for b in a.text_encoder_blocks} == {kind.get(linear1, linear1)}
    comps = moved_components(plan, text_encoder=True)
    unet, clip_ours = comps.unet, comps.text_encoders[0]
    tensors = lycoris_state(unet=unet, text_encoders=comps.text_encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(clip_ours))
    made = _lycoris_network(monkeypatch, algo, file, [clip, nn.Module()], tree, tensors, **drops)
    # LohaModule / LokrModule's bypass Dropout is `drop`, LoConModule's `dropout`
    assert all(m.bypass_mode for m in made.values())
    assert {(m.drop if hasattr(m, "drop") else m.dropout).p for m in made.values()} == {DROPOUT}
    expected = {
        "double_blocks.0.img_attn.qkv": _CLASS[qkv],
        "single_blocks.0.linear1": _CLASS[linear1],
        "double_blocks.0.txt_attn.qkv": _CLASS[algo],
    }
    for path, cls in expected.items():
        assert type(made["lora_unet_" + path.replace(".", "_")]).__name__ == cls, path
    assert {type(m).__name__ for n, m in made.items() if n.startswith("lora_te1_")} == {_CLASS[linear1]}

    assert _layers_as_lycoris(made, layers, comps, "flux") == 3


def _layers_as_lycoris(made: dict[str, nn.Module], layers, comps, family: str) -> int:
    """Every module of lycoris-lora's network `made` (on kohya's `layers`, CLIP-L's) draws and computes what
    the plan's layers do (_drawn_alike), each trained tensor's gradient after equal; how many fused layers."""
    unet, encoders = comps.unet.train(), comps.text_encoders
    fused = modules_alike(made, layers, unet, encoders, least=2)
    assert _grads_as_lycoris(unet, encoders, made, family) >= 2 * len(made)
    return fused


def modules_alike(made: dict[str, nn.Module], layers, unet, encoders: list, least: int) -> int:
    """Each module of lycoris-lora's network `made` against the plan's parts of its kohya layer (`layers`:
    _kohya_layers's; CLIP-L's layers by LyCORIS's lora_te1_ names): _drawn_alike over more than `least`
    distinct draws, every module compared; how many of them are fused (several parts)."""
    fused = compared = 0
    for path, (parts, _) in layers.items():
        name = "lora_unet_" + path.replace(".", "_")
        if name not in made:
            continue
        x = torch.randn(3, _base(parts[0]).in_features)
        assert _drawn_alike(made[name].train(), parts, _call_order(parts, unet), x) > least, name
        fused += len(parts) > 1
        compared += 1
    assert compared == len([n for n in made if n.startswith("lora_unet_")])
    for path, layer in encoders[0].named_modules() if encoders else ():
        name = "lora_te1_" + ("" if path.startswith("text_model.") else "text_model.") + path
        name = name.replace(".", "_")
        if name in made:
            x = torch.randn(3, _base(layer).in_features)
            assert _drawn_alike(made[name].train(), [layer.train()], [layer], x) > least, name
            compared += 1
    assert compared == len(made)
    return fused


# SD3: LoKr on the x blocks' q/k/v, LoCon on the context blocks' q/k/v, the network's LoHa on the projections
SD3_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj"]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "lokr"
[name_algo_map."joint_blocks.*.context_block.attn.qkv"]
algo = "locon"
dim = 3
alpha = 1
"""

# Chroma: LoKr on the double blocks' image q/k/v, LoHa on the single blocks' linear1, the network's LoCon on
# the text q/k/v and the out projections
CHROMA_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "lokr"
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
alpha = 1
"""

_SD3 = (
    "sd3_train_network.py --pretrained_model_name_or_path stabilityai/stable-diffusion-3.5-large "
    "--clip_l clip_l.safetensors --clip_g clip_g.safetensors --t5xxl t5xxl.safetensors",
    ("clip_l", "clip_g", "t5xxl"),
    ["model.base=builtin:tiny-sd3"],
)
_CHROMA = (
    "flux_train_network.py --pretrained_model_name_or_path Chroma1-HD.safetensors --model_type chroma "
    "--t5xxl t5xxl.safetensors --ae ae.safetensors --apply_t5_attn_mask --timestep_sampling sigmoid "
    "--model_prediction_type raw --guidance_scale 0.0",
    ("Chroma1-HD", "t5xxl", "ae"),
    ["model.base=builtin:tiny-chroma", 'model.denoiser_file=""'],
)


@pytest.mark.parametrize(("family", "algo"), [("sd3", "loha"), ("chroma", "locon")])
def test_sd3_and_chroma_bypass_dropout_beside_other_algorithms_is_lycoris(
    tmp_path, monkeypatch, family, algo
):
    """An SD3 LoHa network with LoKr / LoCon entries on the joint blocks' fused q/k/v, a Chroma LoCon network
    with LoKr / LoHa entries on its fused q/k/v and linear1: as on Flux."""
    from dbspec.runtime.sd3_kohya import swapped
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    script, files, base = _SD3 if family == "sd3" else _CHROMA
    (tmp_path / "mixed.toml").write_text(SD3_FILE if family == "sd3" else CHROMA_FILE, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in files:
        component_file(tmp_path / f"{name}.safetensors")
    drops = {"bypass_mode": "True", "dropout": str(DROPOUT), "module_dropout": str(MODULE)}
    given = " ".join(f'"{k}={v}"' for k, v in drops.items())
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch {script} --train_data_dir=x --resolution=64 "
        "--network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo={algo}" "preset=mixed.toml" {given} '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    plan = plan_of(outcome, tmp_path, [*base, *_BASE])
    a = plan.adapter
    assert a.fused and (a.output_dropout, a.module_dropout, a.rank_dropout) == (DROPOUT, MODULE, 0.0)
    others = {"sd3": {"lokr", "lora"}, "chroma": {"lokr", "loha"}}[family]
    assert {b.kind for b in a.blocks} == others and a.kind == {"locon": "lora"}.get(algo, algo)
    comps = moved_components(plan)
    unet = comps.unet
    tensors = lycoris_state(unet=unet, text_encoders=[], family=family, dtype="fp32")
    if family == "sd3":
        layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    else:
        layers = _kohya_layers(
            unet, chroma_model(1, 1, len(unet.distilled_guidance_layer.layers)), chroma_parts
        )
    tree = _kohya_tree(layers)
    made = _lycoris_network(
        monkeypatch, algo, tmp_path / "mixed.toml", [nn.Module()] * 3, tree, tensors, **drops
    )
    assert {type(m).__name__ for m in made.values()} == {"LokrModule", "LoConModule", "LohaModule"}
    assert all(m.bypass_mode for m in made.values())
    comps.text_encoders = []
    assert _layers_as_lycoris(made, layers, comps, family) == (4 if family == "sd3" else 3)
