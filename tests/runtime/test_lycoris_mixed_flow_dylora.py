"""LyCORIS preset files giving Flux / SD3 layers LyCORIS's DyLoRA beside a LoCon / LoKr network's layers
(issue 12): on kohya's Flux and MMDiT a fused Linear (q/k/v, linear1) is one DyLoraModule, its down blocks
over the fused input and one block drawn per training forward, its up blocks' rows the parts'
(runtime/dylora.py tie_fused_dylora, tied in a run of several kinds by runtime/prepare.py). Checked against
lycoris-lora 4.1.3: create_network from the same preset file on kohya's layers (every layer's class, dim,
scale and DyLoRA block size equal to the plan's), DyLoraModule's update for each drawn block on the stacked
weight (the parts' training forward), a tiny run, and its one kohya export: the keys
and shapes of create_network's state dict (DyLoraModule's `lora_down` / `lora_up` / `alpha` under kohya's
fused names beside the other modules'), loaded by create_network_from_weights to the trained outputs;
the adapter folders load back as `dbspec sample` loads them (Flux). One run per form resumes bit-exact
(RESUMED): DyLoRA entries in a LoCon network on Flux's fused Linears, and a DyLoRA network (dora_wd) with
Diag-OFT, LoCon, LoKr, full and IA^3 entries; the other runs save the same kinds of state (DyLoRA's blocks
and draws on fused Linears, the other kinds' weights, resumed in test_lycoris_mixed_flow_full and
test_lycoris_flux_boft) through the same path, on SD3 as on Flux: they train, export and load back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model, mmdit, sd3_parts
from dbspec.runtime.dylora import DyloraLayer, draw_blocks
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    _base,
    _check_kohya_outputs,
    _kohya_layers,
    _kohya_tree,
    _run,
)
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# DyLoRA on the single blocks' linear1 (dim 4, alpha 2, blocks of 2: the entry's own), on the double blocks'
# image q/k/v (the network's dim, alpha and block_size) and on CLIP-L's attention; OTHER on the text stream's
# q/k/v; the network's kind on the projections, linear2 and img_in
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."single_blocks.*.linear1"]
algo = "dylora"
dim = 4
alpha = 2
block_size = 2
[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "dylora"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "OTHER"
dim = 2
alpha = 1
[module_algo_map.CLIPAttention]
algo = "dylora"
"""

# the runs that also resume bit-exact: (test, parameter); see the module's docstring
RESUMED = {("entries", "locon"), ("network", "diag-oft")}

_CLASS = {"lora": "LoConModule", "locon": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule"}
_CLASS["dylora"] = "DyLoraModule"


def _converted(tmp_path: Path, file: str, algo: str, overrides, script: str = "flux", args: str = ""):
    """The kohya command's conversion (network_dim 4, alpha 1, block_size 2; `args`: more network_args) and
    its plan."""
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    if script == "flux":
        for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
            component_file(tmp_path / name)
        command = (
            "accelerate launch flux_train_network.py --pretrained_model_name_or_path "
            "black-forest-labs/FLUX.1-dev --clip_l clip_l.safetensors --t5xxl t5xxl.safetensors "
            "--ae ae.safetensors "
            "--model_prediction_type raw --guidance_scale 1.0 "
        )
    else:
        for name in ("clip_l", "clip_g", "t5xxl"):
            component_file(tmp_path / f"{name}.safetensors")
        command = (
            "accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
            "stabilityai/stable-diffusion-3.5-large --clip_l clip_l.safetensors --clip_g clip_g.safetensors "
            "--t5xxl t5xxl.safetensors "
        )
    outcome = kohya(
        tmp_path,
        command=command + "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 "
        f'--network_alpha=1 --network_args "algo={algo}" "block_size=2" "preset={file}" {args} '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, overrides)


def _their_network(monkeypatch, algo: str, file: Path, text_encoders, tree, **kwargs):
    """lycoris-lora's create_network from the preset file on kohya's layers (as converted: network_dim 4,
    alpha 1, block_size 2; `kwargs`: more network_args), applied: its modules by name, and the network (its
    state dict as `dbspec_state`)."""
    kept_lycoris_presets(monkeypatch)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, text_encoders, tree, algo=algo, preset=str(file), block_size="2", **kwargs
    )
    made.apply_to(text_encoders, tree, apply_text_encoder=True, apply_unet=True)
    made.dbspec_state = made.state_dict()
    return {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}, made


def _described(theirs: nn.Module) -> tuple:
    """LyCORIS's module as its class, dim and scale (DyLoRA: and block size)."""
    name = type(theirs).__name__
    out = (name, theirs.lora_dim, round(float(theirs.scale), 12))
    return out + ((theirs.block_size,) if name == "DyLoraModule" else ())


def _ours(layer: nn.Module) -> tuple:
    """A part's peft layer as LyCORIS's module class, dim and scale (DyLoRA: and block size)."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    if isinstance(layer, DyloraLayer):
        return ("DyLoraModule", layer.r["default"], round(float(layer.scaling["default"]), 12), layer.unit)
    cls = (
        "LohaModule" if isinstance(layer, LoHaLayer) else "LokrModule" if isinstance(layer, LoKrLayer) else ""
    )
    return (cls or "LoConModule", layer.r["default"], round(float(layer.scaling["default"]), 12))


def _same_modules(theirs: dict[str, nn.Module], layers, skip_scale: tuple[str, ...] = ()) -> None:
    """Every kohya layer lycoris-lora adapts is adapted in the trained model with the same class, dim, scale
    and block size (the first part's: a fused layer's parts are one module); `skip_scale`: classes whose
    scale both tools define apart (LoKr's full factors: compared in the other LoKr tests)."""
    for path, (parts, _) in layers.items():
        name = "lora_unet_" + path.replace(".", "_")
        if name not in theirs:
            assert not hasattr(parts[0], "base_layer"), path
            continue
        want, got = _described(theirs[name]), _ours(parts[0])
        if want[0] in skip_scale:
            want, got = want[:2], got[:2]
        assert got == want, path
        assert {_ours(p) for p in parts} == {_ours(parts[0])}, path


def _check_dylora_draws(theirs: dict[str, nn.Module], layers) -> int:
    """Each fused (or plain) DyLoRA layer's training forward with block b drawn, on every part, equals
    lycoris-lora's DyLoraModule's update for that block (get_diff_weight at rank b x block_size: blocks
    0..b at alpha / (b + 1)) on the stacked weight, the module holding the parts' blocks (the down once, the
    ups' rows stacked). How many layers were checked."""
    checked = 0
    torch.manual_seed(3)
    for path, (parts, _order) in layers.items():
        module = theirs.get("lora_unet_" + path.replace(".", "_"))
        if type(module).__name__ != "DyLoraModule":
            continue
        first = parts[0]
        assert all(p.lora_dylora_down["default"][0] is first.lora_dylora_down["default"][0] for p in parts)
        with torch.no_grad():
            for i, (down, up) in enumerate(zip(module.down_list, module.up_list)):
                down.copy_(first.lora_dylora_down["default"][i])
                up.copy_(torch.cat([p.lora_dylora_up["default"][i].flatten(1) for p in parts]))
        x = torch.randn(3, _base(first).in_features)
        for part in parts:
            part.train()
        for b in range(module.block_count):
            for part in parts:
                part.drawn["default"] = b
            with torch.no_grad():
                ours = torch.cat([p(x) for p in parts], dim=-1)
                delta, _ = module.get_diff_weight(rank=b * module.block_size)
                stacked = torch.cat([_base(p)(x) for p in parts], dim=-1) + nn.functional.linear(x, delta)
            torch.testing.assert_close(ours, stacked, rtol=1e-6, atol=1e-6)
        for part in parts:
            part.eval()
        checked += 1
    return checked


def _parts_draw_together(model: nn.Module, layers) -> None:
    """draw_blocks (the run's draw before each micro-batch) gives every part of a fused DyLoRA layer its first
    part's block, and over a few draws each fused layer draws more than one of its blocks."""
    fused = [parts for parts, _ in layers.values() if len(parts) > 1 and isinstance(parts[0], DyloraLayer)]
    assert fused
    seen: dict[int, set[int]] = {}
    for seed in range(8):
        draw_blocks([model], torch.Generator().manual_seed(seed))
        for i, parts in enumerate(fused):
            assert len({p.drawn["default"] for p in parts}) == 1
            seen.setdefault(i, set()).add(parts[0].drawn["default"])
    for i, parts in enumerate(fused):
        assert len(seen[i]) > 1 and seen[i] <= set(range(parts[0].blocks("default")))


def _folders_load_back(whole, planned, layers) -> None:
    """The adapter folders (`unet/` and `unet/<kind>/`) on the plain transformer, as `dbspec sample` loads
    them: every layer computes the trained parts' outputs (DyLoRA's at every rank, outside training)."""
    from dbspec.runtime.weights import load_peft_adapters
    from tests.runtime.test_lycoris_mixed_flow import _path_in

    unet = whole.components.unet
    again = _unwrapped(unet)
    for attr in ("peft_config", "dbspec_kind_configs"):
        if hasattr(again, attr):
            delattr(again, attr)
    a = planned.adapter
    assert load_peft_adapters(Path(whole.final), {"unet": again}, a.lokr_unit_scale, fused_lokr=a) == ["unet"]
    again.eval()
    with torch.no_grad():
        for parts, _ in layers.values():
            reloaded = [again.get_submodule(_path_in(unet, p)) for p in parts]
            x = torch.randn(3, _base(parts[0]).in_features)
            torch.testing.assert_close(
                torch.cat([p(x) for p in reloaded], dim=-1),
                torch.cat([p(x) for p in parts], dim=-1),
                rtol=0,
                atol=1e-5,
            )


def _export_matches_their_state(made, tensors: dict[str, torch.Tensor]) -> None:
    """The export holds exactly create_network's state-dict keys (DyLoraModule's custom_state_dict:
    `lora_down` / `lora_up` / `alpha`), each in its shape."""
    state = made.dbspec_state
    assert set(tensors) == set(state)
    assert {k: tuple(v.shape) for k, v in tensors.items() if tuple(v.shape) != tuple(state[k].shape)} == {}


def _loaded_back(monkeypatch, tensors, layers) -> set[str]:
    """create_network_from_weights on kohya's layers (DyLoRA's saved LoRA layout loads as LoConModules): the
    U-Net modules it loads, each checked to give the trained outputs."""
    monkeypatch.undo()  # the preset's class lists off: the loader's network builds nothing from it
    tree = _kohya_tree(layers)
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [], tree, tensors)
    network.apply_to([], tree, apply_text_encoder=False, apply_unet=True)
    loaded = {m.lora_name for m in network.unet_loras}
    _check_kohya_outputs(tree, layers, loaded)
    return loaded


@pytest.mark.parametrize(("algo", "other"), [("locon", "loha"), ("lokr", "locon")])
def test_dylora_entries_on_flux_fused_layers_train_resume_and_load_in_lycoris(
    tmp_path, monkeypatch, algo, other
):
    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE.replace("OTHER", other), encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE]
    plan = _converted(tmp_path, file.name, algo, base)
    a = plan.adapter
    assert a.kind == {"locon": "lora"}.get(algo, algo) and a.fused
    dylora = sorted((b.rank, b.alpha, b.unit) for b in a.blocks if b.kind == "dylora")
    assert dylora == [(4, 1.0, 2), (4, 2.0, 2)]  # img_attn.qkv at the network's; linear1 the entry's own
    assert [(b.kind, b.unit) for b in a.text_encoder_blocks] == [("dylora", 2)]

    planned, whole, tensors = _run(tmp_path, {"dylora"}, base, resume=("entries", algo) in RESUMED)
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    names = {k.split(".")[0] for k in tensors}
    assert not any("to_q" in n or "proj_mlp" in n for n in names)  # kohya's names only
    assert tensors["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape == (4, 16)  # once
    assert tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (4 * 16 + 48, 4)  # stacked
    assert float(tensors["lora_unet_single_blocks_0_linear1.alpha"]) == 2.0

    clip_trained = whole.components.text_encoders[0]
    clip = _kohya_clip(_unwrapped(clip_trained))
    theirs, made = _their_network(monkeypatch, algo, file, [clip, nn.Module()], _kohya_tree(layers))
    assert {n for n in theirs if n.startswith("lora_unet_")} == {
        n for n in names if n.startswith("lora_unet_")
    }
    assert {type(m).__name__ for n, m in theirs.items() if n.startswith("lora_te1_")} == {"DyLoraModule"}
    expected = {
        "double_blocks.0.img_attn.qkv": "DyLoraModule",
        "single_blocks.0.linear1": "DyLoraModule",
        "double_blocks.0.txt_attn.qkv": _CLASS[other],
        "double_blocks.0.img_attn.proj": _CLASS[algo],
        "single_blocks.0.linear2": _CLASS[algo],
        "img_in": _CLASS[algo],
    }
    assert {p: type(theirs["lora_unet_" + p.replace(".", "_")]).__name__ for p in expected} == expected
    _same_modules(theirs, layers, skip_scale=("LokrModule",))
    clip_layers = dict(clip_trained.named_modules())
    for name, module in theirs.items():
        if name.startswith("lora_te1_"):
            path = name.removeprefix("lora_te1_text_model_").replace("_", ".")
            path = path.replace("self.attn", "self_attn").replace(".proj", "_proj")
            assert _ours(clip_layers[path]) == _described(module), name
    _export_matches_their_state(made, tensors)
    assert _check_dylora_draws(theirs, layers) == 2
    _parts_draw_together(unet, layers)

    # create_network_from_weights: DyLoRA's saved LoRA layout loads as LoConModules, to the trained outputs
    assert _loaded_back(monkeypatch, tensors, layers) == {n for n in names if n.startswith("lora_unet_")}
    _folders_load_back(whole, planned, layers)


# SD3: DyLoRA on the x blocks' q/k/v (blocks of 1: the entry's own) and on the context modulations (the last
# block's rows swapped to kohya's (shift, scale)), LoCon on the context blocks' q/k/v, the network's LoKr on
# the projections
SD3_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = [
    "joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj", "joint_blocks.*.context_block.adaLN_modulation.1"
]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "dylora"
block_size = 1
[name_algo_map."joint_blocks.*.context_block.adaLN_modulation.1"]
algo = "dylora"
dim = 2
alpha = 4
[name_algo_map."joint_blocks.*.context_block.attn.qkv"]
algo = "locon"
dim = 2
"""


def test_dylora_entries_on_sd3_fused_layers_train_resume_and_load_in_lycoris(tmp_path, monkeypatch):
    from dbspec.runtime.sd3_kohya import swapped

    file = tmp_path / "mixed.toml"
    file.write_text(SD3_FILE, encoding="utf-8")
    base = ["model.base=builtin:tiny-sd3", *_BASE]
    plan = _converted(tmp_path, file.name, "lokr", base, script="sd3")
    assert plan.adapter.kind == "lokr" and plan.adapter.fused
    assert sorted((b.rank, b.alpha, b.unit) for b in plan.adapter.blocks if b.kind == "dylora") == [
        (2, 4.0, 2),
        (4, 1.0, 1),
    ]
    _, whole, tensors = _run(tmp_path, {"dylora", "lora"}, base, resume=False)  # resumes: RESUMED
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    expected = {
        **{f"joint_blocks.{i}.x_block.attn.qkv": "DyLoraModule" for i in (0, 1)},
        **{f"joint_blocks.{i}.context_block.adaLN_modulation.1": "DyLoraModule" for i in (0, 1)},
        **{f"joint_blocks.{i}.context_block.attn.qkv": "LoConModule" for i in (0, 1)},
        **{f"joint_blocks.{i}.x_block.attn.proj": "LokrModule" for i in (0, 1)},
        "joint_blocks.0.context_block.attn.proj": "LokrModule",  # the last context block has none
    }
    names = {k.split(".")[0] for k in tensors}
    assert names == {"lora_unet_" + p.replace(".", "_") for p in expected}
    theirs, made = _their_network(monkeypatch, "lokr", file, [nn.Module()] * 3, _kohya_tree(layers))
    assert {n: type(m).__name__ for n, m in theirs.items()} == {
        "lora_unet_" + p.replace(".", "_"): c for p, c in expected.items()
    }
    _same_modules(theirs, layers, skip_scale=("LokrModule",))
    _export_matches_their_state(made, tensors)
    assert _check_dylora_draws(theirs, layers) == 4  # the x blocks' q/k/v and the context modulations
    _parts_draw_together(unet, layers)

    assert _loaded_back(monkeypatch, tensors, layers) == names
    _starts_from_export(tmp_path, base, whole, tensors, theirs)


def _starts_from_export(tmp_path: Path, base, whole, tensors, theirs) -> None:
    """The run's kohya export starts the same spec (`--network_weights`, issue 12; was DBS356): each fused
    DyLoraModule's one `alpha` on every part (lycoris-lora's load_state_dict takes only it), the LoCon / LoKr
    modules' tensors whole; another DyLoRA alpha in the file stops the load."""
    from safetensors.torch import save_file

    from dbspec.runtime.init_weights import load_init_weights
    from tests.runtime.runspec import compile_spec
    from tests.runtime.test_flow_init import _loaded
    from tests.runtime.test_lycoris_preset_file_flow import _spec

    export = next(Path(whole.final).glob("*.kohya.safetensors"))
    start = ["adapter.init_weights=" + str(export), "adapter.init_partial=true", "output.dir=again"]
    plan = compile_spec(_spec(tmp_path), [*base, *start])
    comps, count = _loaded(plan)
    assert count == len({k.split(".")[0] for k in tensors}) == plan.adapter.init_layers
    layers = _kohya_layers(comps.unet, mmdit(2, ()), sd3_parts)
    dylora = [n for n, m in theirs.items() if type(m).__name__ == "DyLoraModule"]
    by_name = {"lora_unet_" + p.replace(".", "_"): parts for p, (parts, _) in layers.items()}
    for name in dylora:
        alphas = {float(p.lora_alpha["default"]) for p in by_name[name]}
        assert alphas == {float(tensors[f"{name}.alpha"])}, name
    changed = dict(tensors)
    changed[f"{dylora[0]}.alpha"] = tensors[f"{dylora[0]}.alpha"] * 3
    save_file(changed, str(tmp_path / "changed.safetensors"))
    start[0] = "adapter.init_weights=" + str(tmp_path / "changed.safetensors")
    with pytest.raises(ValueError, match=f"{dylora[0]}.alpha"):  # on the models started above
        load_init_weights(compile_spec(_spec(tmp_path), [*base, *start]), comps.unet, comps.text_encoders)


# a DyLoRA network (block_size 2) with entries of other algorithms: LoCon on the text stream's q/k/v, LoKr on
# the single blocks' linear1, full on img_in, IA^3 on txt_in, QKV on the double blocks' image q/k/v; DyLoRA of
# its own dim, alpha and block size on CLIP-L's MLPs, at the network's on its attention and elsewhere (BOFT at
# dim 24: LyCORIS's split of FLUX.1's 9216 q/k/v rows, see test_lycoris_flux_boft.py)
DYLORA_NETWORK = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in", "txt_in"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "locon"
dim = 2
alpha = 1
[name_algo_map."single_blocks.*.linear1"]
algo = "lokr"
[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "QKV"
dim = DIM
[name_algo_map.img_in]
algo = "full"
[name_algo_map.txt_in]
algo = "ia3"
[module_algo_map.CLIPMLP]
algo = "dylora"
dim = 6
alpha = 3
block_size = 3
"""


def _kind_of(layer: nn.Module) -> str:
    """A part's peft layer as LyCORIS's module class."""
    from dbspec.runtime.lycoris_boft import BoftLayer
    from dbspec.runtime.lycoris_full import FullLayer
    from dbspec.runtime.lycoris_glora import GloraLayer
    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.lycoris_oft import DiagOftLayer

    for cls, name in (
        (BoftLayer, "ButterflyOFTModule"),  # a DiagOftLayer too: first
        (FullLayer, "FullModule"),
        (Ia3Layer, "IA3Module"),
        (DiagOftLayer, "DiagOFTModule"),
        (GloraLayer, "GLoRAModule"),
    ):
        if isinstance(layer, cls):
            return name
    return _ours(layer)[0]


@pytest.mark.parametrize("qkv", ["diag-oft", "glora", "boft"])
def test_dylora_network_with_other_entries_on_flux_trains_resumes_and_loads_in_lycoris(
    tmp_path, monkeypatch, qkv
):
    from tests.runtime.test_lycoris_mixed_flow_full import _without_ia3

    file = tmp_path / "mixed.toml"
    dim = 24 if qkv == "boft" else 4
    file.write_text(DYLORA_NETWORK.replace("QKV", qkv).replace("DIM", str(dim)), encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE]
    wd = {"dora_wd": "True"} if qkv == "diag-oft" else {}  # was DBS403: the DyLoRA adapter has no dora
    args = " ".join(f'"{k}={v}"' for k, v in wd.items())
    plan = _converted(tmp_path, file.name, "dylora", base, args=args)
    a = plan.adapter
    assert (a.kind, a.dylora_unit, a.dylora_form) == ("dylora", 2, "lycoris") and a.fused
    kinds = {"lora", "lokr", qkv, "full", "ia3"}
    assert {b.kind for b in a.blocks} - {"adapter"} == kinds
    # dora_wd: the LoCon and LoKr blocks' own `dora` (each fused Linear whole), DyLoRA's and the others' none
    doras = {(b.kind, b.dora) for b in (*a.blocks, *a.text_encoder_blocks) if b.dora != "adapter"}
    assert doras == ({("lora", "on"), ("lokr", "on")} if wd else set())
    planned, whole, tensors = _run(tmp_path, kinds, base, resume=("network", qkv) in RESUMED)
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    names = {k.split(".")[0] for k in tensors}
    assert not any("to_q" in n or "proj_mlp" in n for n in names)  # kohya's names only

    clip_trained = whole.components.text_encoders[0]
    clip = _kohya_clip(_unwrapped(clip_trained))
    theirs, made = _their_network(monkeypatch, "dylora", file, [clip, nn.Module()], _kohya_tree(layers), **wd)
    expected = {
        "double_blocks.0.img_attn.qkv": {
            "diag-oft": "DiagOFTModule",
            "glora": "GLoRAModule",
            "boft": "ButterflyOFTModule",
        }[qkv],
        "double_blocks.0.txt_attn.qkv": "LoConModule",
        "single_blocks.0.linear1": "LokrModule",
        "img_in": "FullModule",
        "txt_in": "IA3Module",
        "double_blocks.0.img_attn.proj": "DyLoraModule",
        "double_blocks.0.txt_attn.proj": "DyLoraModule",
        "single_blocks.0.linear2": "DyLoraModule",
    }
    unet_names = {n for n in theirs if n.startswith("lora_unet_")}
    assert (
        unet_names
        == {"lora_unet_" + p.replace(".", "_") for p in expected}
        == {n for n in names if n.startswith("lora_unet_")}
    )
    for path, cls in expected.items():
        assert type(theirs["lora_unet_" + path.replace(".", "_")]).__name__ == cls, path
        assert {_kind_of(p) for p in layers[path][0]} == {cls}, path
    ranked = {p: v for p, v in layers.items() if expected.get(p) in ("DyLoraModule", "LoConModule")}
    _same_modules(theirs, ranked)
    clip_layers = dict(clip_trained.named_modules())
    te = {n: m for n, m in theirs.items() if n.startswith("lora_te1_")}
    assert {_described(m)[1:] for m in te.values()} == {(4, 0.25, 2), (6, 0.5, 3)}
    for name, module in te.items():
        path = name.removeprefix("lora_te1_text_model_").replace("_", ".")
        path = path.replace("self.attn", "self_attn").replace(".proj", "_proj")
        assert _ours(clip_layers[path]) == _described(module), name
    _export_matches_their_state(made, tensors)  # with dora_wd: dora_scale on the modules it decomposes
    decomposed = {n for n, m in theirs.items() if getattr(m, "wd", False)}
    assert decomposed == {k.split(".")[0] for k in tensors if k.endswith(".dora_scale")}
    assert decomposed == (
        {"lora_unet_double_blocks_0_txt_attn_qkv", "lora_unet_single_blocks_0_linear1"} if wd else set()
    )
    assert _check_dylora_draws(theirs, layers) == 3  # the projections and linear2 (plain Linears)

    others = {
        p: v for p, v in layers.items() if p != "txt_in"
    }  # IA^3's: lycoris-lora's loader cannot build it
    assert _loaded_back(monkeypatch, _without_ia3(tensors), others) == unet_names - {"lora_unet_txt_in"}
    _folders_load_back(whole, planned, layers)


# SD3: a DyLoRA network (block_size 2) on the context blocks' q/k/v and projections, LoKr on the x blocks'
# q/k/v, LoCon on their projections
SD3_DYLORA_NETWORK = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj"]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "lokr"
[name_algo_map."joint_blocks.*.x_block.attn.proj"]
algo = "locon"
dim = 2
"""


def test_dylora_network_with_other_entries_on_sd3_trains_resumes_and_loads_in_lycoris(tmp_path, monkeypatch):
    from dbspec.runtime.sd3_kohya import swapped

    file = tmp_path / "mixed.toml"
    file.write_text(SD3_DYLORA_NETWORK, encoding="utf-8")
    base = ["model.base=builtin:tiny-sd3", *_BASE]
    plan = _converted(tmp_path, file.name, "dylora", base, script="sd3")
    assert (plan.adapter.kind, plan.adapter.dylora_unit) == ("dylora", 2) and plan.adapter.fused
    _, whole, tensors = _run(tmp_path, {"lokr", "lora"}, base, resume=False)  # resumes: RESUMED
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, mmdit(2, ()), sd3_parts, swapped)
    expected = {
        **{f"joint_blocks.{i}.x_block.attn.qkv": "LokrModule" for i in (0, 1)},
        **{f"joint_blocks.{i}.x_block.attn.proj": "LoConModule" for i in (0, 1)},
        **{f"joint_blocks.{i}.context_block.attn.qkv": "DyLoraModule" for i in (0, 1)},
        "joint_blocks.0.context_block.attn.proj": "DyLoraModule",  # the last context block has none
    }
    names = {k.split(".")[0] for k in tensors}
    assert names == {"lora_unet_" + p.replace(".", "_") for p in expected}
    theirs, made = _their_network(monkeypatch, "dylora", file, [nn.Module()] * 3, _kohya_tree(layers))
    assert {n: type(m).__name__ for n, m in theirs.items()} == {
        "lora_unet_" + p.replace(".", "_"): c for p, c in expected.items()
    }
    _same_modules(theirs, layers, skip_scale=("LokrModule",))
    _export_matches_their_state(made, tensors)
    assert _check_dylora_draws(theirs, layers) == 3
    _parts_draw_together(unet, layers)

    assert _loaded_back(monkeypatch, tensors, layers) == names
