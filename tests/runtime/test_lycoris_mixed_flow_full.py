"""LyCORIS preset files giving Flux / SD3 layers LyCORIS's full, IA^3, Diag-OFT or GLoRA algo beside a LoCon /
LoKr network's layers (issue 12): on kohya's Flux and MMDiT a fused Linear (q/k/v, linear1) is one FullModule
(a trained copy of its whole weight and bias: exactly a copy of each part's rows), one IA3Module (a scale per
output row of the fused weight: each part's rows' scales, concatenated), one DiagOFTModule (blocks of rows
over the stacked rows, none spanning two parts: each part's blocks) or one GLoRAModule (a1, a2, b2 shared by
the parts, b1 their rows). A tiny run of each file trains and resumes
bit-exact, and its one kohya export, on kohya's layers rebuilt from the trained parts (the base weights
stacked in kohya's row order), is what lycoris-lora 4.1.3 builds from the same preset file (create_network:
every layer's class, its module names, its state loaded strictly) and what its create_network_from_weights
rebuilds (every module but IA3Module, which that loader cannot make: TypeError), each computing the trained
layers' outputs; the adapter folders load back as `dbspec sample` loads them (runtime/mixed_kinds.py,
lycoris_full.py, lycoris_ia3.py, lycoris_export.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_flow import _path_in, _tree
from tests.runtime.test_lycoris_preset_file_flow import _converted, _spec, _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# full (or Diag-OFT) on the double blocks' image q/k/v and full on txt_in, IA^3 (or GLoRA) on the single
# blocks' linear1 and IA^3 on img_in, LoHa (a LoCon network) or LoCon (a LoKr network) on the text stream's
# q/k/v, the network's kind on the rest; full on CLIP-L's attention
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in", "txt_in"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "QKV"
[name_algo_map."single_blocks.*.linear1"]
algo = "LINEAR1"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "OTHER"
dim = 2
alpha = 1
[name_algo_map.img_in]
algo = "ia3"
[name_algo_map.txt_in]
algo = "full"
[module_algo_map.CLIPAttention]
algo = "full"
"""

_CLASS = {
    "lora": "LoConModule",
    "loha": "LohaModule",
    "lokr": "LokrModule",
    "full": "FullModule",
    "ia3": "IA3Module",
    "diag-oft": "DiagOFTModule",
    "glora": "GLoRAModule",
}
_BASE = ["model.text_encoder_files=[]", 'model.vae=""', "schedule.steps=2", "model.t5_max_length=16"]
_BASE += ['checkpoints.exports=["kohya_lora"]']


def _kohya_layers(
    transformer: nn.Module, rows, parts_of: Callable[[str], tuple[str, ...]], swapped=None
) -> dict[str, tuple[list[nn.Module], torch.Tensor | None]]:
    """kohya's Linears of the (trained) transformer: path -> (its diffusers parts, kohya's row order where it
    differs: SD3's last context modulation holds (shift, scale))."""
    plain = _unwrapped(transformer)
    out = {}
    for path, _, kind in rows:
        if kind != "linear":
            continue
        parts = [transformer.get_submodule(p) for p in parts_of(path)]
        order = None
        if swapped is not None and len(parts) == 1 and swapped(parts_of(path)[0], plain):
            half = _base(parts[0]).out_features // 2
            order = torch.cat([torch.arange(half, 2 * half), torch.arange(half)])
        out[path] = (parts, order)
    return out


def _base(layer: nn.Module) -> nn.Linear:
    return getattr(layer, "base_layer", layer)


def _kohya_tree(layers) -> nn.Module:
    """kohya's model of `layers`: each Linear the parts' base weights and biases stacked in kohya's rows."""
    fused = {}
    for path, (parts, order) in layers.items():
        base = [_base(p) for p in parts]
        linear = nn.Linear(base[0].in_features, sum(b.out_features for b in base))
        with torch.no_grad():
            weight, bias = torch.cat([b.weight for b in base]), torch.cat([b.bias for b in base])
            linear.weight.copy_(weight if order is None else weight[order])
            linear.bias.copy_(bias if order is None else bias[order])
        fused[path] = linear
    return _tree(fused)


def _trained(parts, order, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained parts' output and the base parts' output, stacked in kohya's row order."""
    ours = torch.cat([p(x) for p in parts], dim=-1)
    before = torch.cat([_base(p)(x) for p in parts], dim=-1)
    return (ours, before) if order is None else (ours[:, order], before[:, order])


def _check_kohya_outputs(tree: nn.Module, layers, names: set[str]) -> None:
    """Each kohya layer named in `names` (lycoris-lora's module applied to it) computes the trained parts'
    output, which differs from the base's; the others are the base layer."""
    torch.manual_seed(0)
    with torch.no_grad():
        for path, (parts, order) in layers.items():
            x = torch.randn(3, _base(parts[0]).in_features)
            ours, before = _trained(parts, order, x)
            if "lora_unet_" + path.replace(".", "_") in names:
                assert not torch.allclose(ours, before, atol=1e-7), path
            torch.testing.assert_close(tree.get_submodule(path)(x), ours, rtol=0, atol=1e-5)


def _run(tmp_path: Path, planned_kinds: set[str], base: list[str], resume: bool = True):
    """The converted spec's tiny run (models kept) and a run stopped after 1 of 2 steps and resumed: equal
    losses and exports bit for bit (`resume` False: the run alone, where another test resumes the same
    kinds of state). (plan, run, export tensors)."""
    planned = compile_spec(_spec(tmp_path), [*base, "output.dir=whole"])
    assert planned.adapter.fused and {b.kind for b in planned.adapter.blocks} >= planned_kinds
    whole = execute(planned, keep_models=True)
    if not resume:
        assert whole.status == "finished"
        return planned, whole, load_file(str(next(Path(whole.final).glob("*.kohya.safetensors"))))
    parts = compile_spec(_spec(tmp_path), [*base, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    files = sorted(str(p.relative_to(whole.final)) for p in Path(whole.final).rglob("*.safetensors"))
    for name in files:  # the adapter folders (one per kind) and the kohya export
        x, y = load_file(str(Path(whole.final) / name)), load_file(str(Path(second.final) / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    tensors = load_file(str(next(Path(whole.final).glob("*.kohya.safetensors"))))
    return planned, whole, tensors


def _lycoris_network(monkeypatch, algo: str, file: Path, text_encoders, tree, tensors, **network_args):
    """lycoris-lora's create_network from the preset file on kohya's layers (network_dim 4, alpha 1, as
    converted; `network_args`: kohya's other --network_args), applied, the export loaded strictly (every key
    a module's, every module's key in it)."""
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, text_encoders, tree, algo=algo, preset=str(file), **network_args
    )
    made.apply_to(text_encoders, tree, apply_text_encoder=True, apply_unet=True)
    result = made.load_state_dict(tensors, strict=False)
    assert not result.unexpected_keys and not result.missing_keys, result
    return {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}


def check_sd3_network(
    monkeypatch, algo: str, file: Path, layers: dict, tensors: dict, expected: dict
) -> None:
    """An SD3 run's export (`tensors`) holds exactly the `expected` {kohya path: LyCORIS class} modules;
    create_network (`algo`, the preset `file`) builds those classes on kohya's layers and, loaded with the
    export, computes the trained layers' outputs; create_network_from_weights (which cannot rebuild IA3Module)
    loads the rest alike."""
    names = {k.split(".")[0] for k in tensors}
    assert names == {"lora_unet_" + p.replace(".", "_") for p in expected}

    tree = _kohya_tree(layers)
    theirs = _lycoris_network(monkeypatch, algo, file, [nn.Module()] * 3, tree, tensors)
    assert {n: type(m).__name__ for n, m in theirs.items()} == {
        "lora_unet_" + p.replace(".", "_"): c for p, c in expected.items()
    }
    _check_kohya_outputs(tree, layers, names)

    tree = _kohya_tree(layers)
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [], tree, _without_ia3(tensors))
    network.apply_to([], tree, apply_text_encoder=False, apply_unet=True)
    loaded = {m.lora_name for m in network.unet_loras}
    assert loaded == {"lora_unet_" + p.replace(".", "_") for p, c in expected.items() if c != "IA3Module"}
    _check_kohya_outputs(tree, {p: v for p, v in layers.items() if expected.get(p) != "IA3Module"}, loaded)


def _without_ia3(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ia3 = {k.split(".")[0] for k in tensors if k.endswith(".on_input")}
    return {k: v for k, v in tensors.items() if k.split(".")[0] not in ia3}


@pytest.mark.parametrize(
    ("algo", "other", "qkv", "linear1"),
    [
        ("locon", "loha", "full", "ia3"),
        ("lokr", "locon", "full", "ia3"),
        ("locon", "loha", "diag-oft", "glora"),
    ],
)
def test_lycoris_kinds_on_flux_fused_layers_train_resume_and_load_in_lycoris(
    tmp_path, monkeypatch, algo, other, qkv, linear1
):
    from dbspec.runtime.weights import load_peft_adapters

    file = tmp_path / "mixed.toml"
    text = FLUX_FILE.replace("OTHER", other).replace("QKV", qkv).replace("LINEAR1", linear1)
    file.write_text(text, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE]
    plan = _converted(tmp_path, file.name, algo, overrides=base)
    own = {"locon": "lora"}.get(algo, algo)
    assert plan.adapter.kind == own
    kinds = {"full", "ia3", qkv, linear1, {"locon": "lora"}.get(other, other)}
    assert {b.kind for b in plan.adapter.blocks} == kinds
    assert {b.kind for b in plan.adapter.text_encoder_blocks} == {"full"}
    planned, whole, tensors = _run(tmp_path, kinds, base)
    names = {k.split(".")[0] for k in tensors}
    assert not any("to_q" in n or "proj_mlp" in n or "x_embedder" in n for n in names)  # kohya's names only
    if qkv == "full":  # the parts' copies stacked: the fused layer's
        assert {k for k in tensors if k.startswith("lora_unet_double_blocks_0_img_attn_qkv.")} == {
            "lora_unet_double_blocks_0_img_attn_qkv.diff",
            "lora_unet_double_blocks_0_img_attn_qkv.diff_b",
        }
    else:  # DiagOFTModule's blocks of 4 rows (factorization(48, 4)) over the stacked q, k, v rows
        assert tensors["lora_unet_double_blocks_0_img_attn_qkv.oft_blocks"].shape == (12, 4, 4)
    if linear1 == "ia3":
        assert tensors["lora_unet_single_blocks_0_linear1.weight"].shape == (4 * 16 + 48,)  # q, k, v, mlp
    else:  # GLoRAModule's a1 / a2 / b2 once, b1 over the stacked rows
        assert tensors["lora_unet_single_blocks_0_linear1.b1.weight"].shape == (4 * 16 + 48, 4)
        assert tensors["lora_unet_single_blocks_0_linear1.a1.weight"].shape == (16, 4)

    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip_trained = whole.components.text_encoders[0]
    clip_layers = dict(clip_trained.named_modules())
    expected = {
        "double_blocks.0.img_attn.qkv": _CLASS[qkv],
        "txt_in": "FullModule",
        "single_blocks.0.linear1": _CLASS[linear1],
        "img_in": "IA3Module",
        "double_blocks.0.txt_attn.qkv": _CLASS[{"locon": "lora"}.get(other, other)],
        "double_blocks.0.img_attn.proj": _CLASS[own],
        "double_blocks.0.txt_attn.proj": _CLASS[own],
        "single_blocks.0.linear2": _CLASS[own],
    }

    # lycoris-lora's network from the same preset file, the export loaded into it
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(clip_trained))
    theirs = _lycoris_network(monkeypatch, algo, file, [clip, nn.Module()], tree, tensors)
    assert set(theirs) == names
    unet_names = {n for n in names if n.startswith("lora_unet_")}
    assert unet_names == {"lora_unet_" + p.replace(".", "_") for p in expected}
    for path, cls in expected.items():
        assert type(theirs["lora_unet_" + path.replace(".", "_")]).__name__ == cls, path
    assert {type(m).__name__ for n, m in theirs.items() if n.startswith("lora_te1_")} == {"FullModule"}
    _check_kohya_outputs(tree, layers, unet_names)
    name = "encoder.layers.0.self_attn.q_proj"
    x = torch.randn(3, clip_layers[name].base_layer.in_features)
    with torch.no_grad():
        assert not torch.allclose(clip_layers[name](x), clip_layers[name].base_layer(x), atol=1e-7)
        torch.testing.assert_close(
            clip.get_submodule(f"text_model.{name}")(x), clip_layers[name](x), rtol=0, atol=1e-5
        )

    # create_network_from_weights: every module but the IA^3 ones built from the file
    tree = _kohya_tree(layers)
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [], tree, _without_ia3(tensors))
    network.apply_to([], tree, apply_text_encoder=False, apply_unet=True)
    loaded = {m.lora_name: type(m).__name__ for m in network.unet_loras}
    assert loaded == {"lora_unet_" + p.replace(".", "_"): c for p, c in expected.items() if c != "IA3Module"}
    ia3 = {p: v for p, v in layers.items() if expected.get(p) == "IA3Module"}
    _check_kohya_outputs(tree, {p: v for p, v in layers.items() if p not in ia3}, set(loaded))

    # the adapter folders (`unet/` and `unet/<kind>/`) on the plain transformer, as `dbspec sample` loads them
    again = _unwrapped(unet)
    for attr in ("peft_config", "dbspec_kind_configs"):
        if hasattr(again, attr):
            delattr(again, attr)
    a = planned.adapter
    assert load_peft_adapters(Path(whole.final), {"unet": again}, a.lokr_unit_scale, fused_lokr=a) == ["unet"]
    with torch.no_grad():
        for parts, _ in layers.values():
            reloaded = [again.get_submodule(_path_in(unet, p)) for p in parts]
            x = torch.randn(3, _base(parts[0]).in_features)
            torch.testing.assert_close(
                torch.cat([p(x) for p in reloaded], dim=-1), _trained(parts, None, x)[0], rtol=0, atol=1e-5
            )


# SD3: full on the x blocks' q/k/v and the context modulations (the last block's rows swapped to kohya's
# (shift, scale)), IA^3 on the context blocks' q/k/v, the network's LoKr on the projections
SD3_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = [
    "joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj", "joint_blocks.*.context_block.adaLN_modulation.1"
]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "full"
[name_algo_map."joint_blocks.*.context_block.adaLN_modulation.1"]
algo = "full"
[name_algo_map."joint_blocks.*.context_block.attn.qkv"]
algo = "ia3"
"""


def test_full_and_ia3_on_sd3_fused_layers_train_resume_and_load_in_lycoris(tmp_path, monkeypatch):
    from dbspec.runtime.sd3_kohya import swapped
    from tests.unit.convert_kit import component_file, errors, images, kohya

    file = tmp_path / "mixed.toml"
    file.write_text(SD3_FILE, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l", "clip_g", "t5xxl"):
        component_file(tmp_path / f"{name}.safetensors")
    outcome = kohya(
        tmp_path,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
        "--t5xxl t5xxl.safetensors --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        '--network_dim=4 --network_alpha=1 --network_args "algo=lokr" "preset=mixed.toml" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    _, whole, tensors = _run(tmp_path, {"full", "ia3"}, ["model.base=builtin:tiny-sd3", *_BASE])
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    assert layers["joint_blocks.1.context_block.adaLN_modulation.1"][1] is not None  # kohya's rows
    expected = {
        **{f"joint_blocks.{i}.x_block.attn.qkv": "FullModule" for i in (0, 1)},
        **{f"joint_blocks.{i}.context_block.adaLN_modulation.1": "FullModule" for i in (0, 1)},
        **{f"joint_blocks.{i}.context_block.attn.qkv": "IA3Module" for i in (0, 1)},
        **{f"joint_blocks.{i}.x_block.attn.proj": "LokrModule" for i in (0, 1)},
        "joint_blocks.0.context_block.attn.proj": "LokrModule",  # the last context block has none
    }
    check_sd3_network(monkeypatch, "lokr", file, layers, tensors, expected)
