"""LyCORIS preset files giving Flux layers other algorithms than the network's (issue 12): LoKr on the double
blocks' image q/k/v, LoHa on the single blocks' linear1 and on img_in, LoCon elsewhere (the text stream's
fused q/k/v too: one LoConModule on the fused Linear), LoHa on CLIP-L's attention. The converted plan's
blocks (`kind`) against lycoris-lora 4.1.3's create_network on kohya's Flux tree rebuilt on the meta device
(test_lycoris_preset_file_flow.py's), and a tiny Flux run of the file: it resumes bit-exact, and its one
kohya export loads in lycoris-lora's create_network_from_weights, each module of its kind computing what the
trained (fused) layers compute (runtime/mixed_kinds.py, fused.py, fused_lokr.py, fused_loha.py,
lycoris_export.py)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_preset_file_flow import (  # noqa: F401 (models: a fixture)
    _adapted,
    _converted,
    _lycoris_form,
    _spec,
    _unwrapped,
    models,
)
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")

MIXED = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "lokr"
dim = 8
alpha = 4
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
alpha = 1
[name_algo_map.img_in]
algo = "loha"
dim = 3
[module_algo_map.CLIPAttention]
algo = "loha"
dim = 2
alpha = 1
"""

_CLASS = {"lora": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule"}
# the same file on a LoKr network: LoCon on the image q/k/v, LoKr on what no entry reaches
MIXED_LOKR = MIXED.replace('algo = "lokr"\ndim = 8', 'algo = "locon"\ndim = 8')
# with the network's dora_wd (issue 12; was DBS403 / a spec's DBS578 on the fused Linears): every LoKr, LoCon
# and LoHa module decomposed but img_in's, whose entry's weight_decompose is false (was DBS583), and a full
# entry on the image stream's out projection (FullModule never reads it)
# the LoKr entry's own weight_decompose on a LoCon network with wd_on_output=False: the image q/k/v's one
# LokrModule per input column of the fused Linear (was DBS403 / a spec's DBS583), nothing else decomposed
MIXED_COLUMNS = MIXED.replace("dim = 8\n", "dim = 8\nweight_decompose = true\n")
MIXED_LOKR_DORA = MIXED_LOKR.replace("dim = 3\n", "dim = 3\nweight_decompose = false\n") + (
    '[name_algo_map."double_blocks.*.img_attn.proj"]\nalgo = "full"\n'
)


def _file(tmp_path: Path, text: str = MIXED) -> str:
    (tmp_path / "mixed.toml").write_text(text, encoding="utf-8")
    return "mixed.toml"


def test_mixed_flux_file_builds_lycoris_modules(models, tmp_path, monkeypatch):  # noqa: F811
    """Every kohya Flux Linear and CLIP-L Linear the file adapts has, in the converted plan, the class, rank,
    scale and tensor shapes of the module lycoris-lora's create_network builds on it (the fused q/k/v
    through all their diffusers parts)."""
    kept_lycoris_presets(monkeypatch)
    kohya = copy.deepcopy(models["kohya"])  # FLUX.1's widths on the layers of other kinds: real splits
    with torch.device("meta"):
        kohya.img_in = nn.Linear(64, 3072)
        for i in range(19):
            kohya.get_submodule(f"double_blocks.{i}.img_attn").qkv = nn.Linear(3072, 9216)
        for i in range(38):
            kohya.get_submodule(f"single_blocks.{i}").linear1 = nn.Linear(3072, 21504)
    path = _file(tmp_path)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, models["te"], kohya, algo="locon", preset=str(tmp_path / path)
    )
    theirs = {
        m.lora_name: (
            type(m).__name__,
            m.lora_dim,
            float(m.scale),
            {k: tuple(v.shape) for k, v in m.state_dict().items()},
        )
        for m in [*made.unet_loras, *made.text_encoder_loras]
    }
    assert {v[0] for v in theirs.values()} == {"LoConModule", "LohaModule", "LokrModule"}
    a = _converted(tmp_path, path).adapter
    assert a.kind == "lora" and {b.kind for b in a.blocks} >= {"lokr", "loha"}
    ours = {}
    for name, module in models["te"][0].named_modules():
        if isinstance(module, nn.Linear) and _matches(name, a.text_encoder_targets):
            block = next(
                (b for b in a.text_encoder_blocks if re.search(b.pattern, f"text_encoder.{name}")), None
            )
            ours[f"lora_te1_{name.replace('.', '_')}"] = _form(module, block, a)
    for kohya_path, _, kind in flux_model():
        parts = diffusers_parts(kohya_path) if kind else ()
        if not parts or not _adapted(parts[0], a):
            continue
        block = next((b for b in a.blocks if re.search(b.pattern, parts[0])), None)
        assert all(re.search(block.pattern, p) for p in parts) if block else True, kohya_path
        ours["lora_unet_" + kohya_path.replace(".", "_")] = _form(kohya.get_submodule(kohya_path), block, a)
    assert sorted(ours) == sorted(theirs)
    for name, (cls, rank, scale, shapes) in ours.items():
        assert theirs[name][:2] == (cls, rank) and theirs[name][2] == pytest.approx(scale), name
        assert theirs[name][3] == shapes, name
    assert theirs["lora_unet_double_blocks_0_img_attn_qkv"][0] == "LokrModule"
    assert theirs["lora_unet_double_blocks_0_txt_attn_qkv"][0] == "LoConModule"
    assert theirs["lora_unet_single_blocks_0_linear1"][0] == "LohaModule"


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _form(module: nn.Linear, block, a) -> tuple:
    """(LyCORIS class, rank, scale, state shapes) of the plan's module of the layer's kind."""
    kind = a.kind if block is None or block.kind == "adapter" else block.kind
    out_dim, in_dim = module.weight.shape
    if kind == "lora":
        rank, alpha = (a.rank, a.alpha) if block is None else (block.rank, block.alpha)
        shapes = {"lora_down.weight": (rank, in_dim), "lora_up.weight": (out_dim, rank), "alpha": ()}
        return _CLASS[kind], rank, alpha / rank, shapes
    # LoKr layers of a LoRA network: LyCORIS's default split (factor -1), no decompose_both
    plain = a if block is None else block
    rank, scale, shapes = _lycoris_form(kind, out_dim, in_dim, block, _Defaults(plain))
    return _CLASS[kind], rank, scale, shapes


class _Defaults:
    """The network's LoKr options LyCORIS hands every module (create_network's defaults), rank and alpha
    the layer's."""

    factor, decompose_both, unbalanced_factorization = -1, False, False

    def __init__(self, plain):
        self.rank, self.alpha = plain.rank, plain.alpha


def _tree(paths: dict[str, nn.Module]) -> nn.Module:
    """A module tree holding each of `paths`' modules at its path (kohya's names)."""
    root = nn.Module()
    for path, module in paths.items():
        *parents, leaf = path.split(".")
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, nn.Module())
            node = getattr(node, name)
        node.add_module(leaf, module)
    return root


@pytest.mark.parametrize("algo", ["locon", "lokr"])
def test_mixed_flux_run_resumes_and_loads_in_lycoris(tmp_path, algo, monkeypatch):
    """A tiny Flux run of the file (on a LoCon network whose LoKr entry decomposes its own layers per input
    column, MIXED_COLUMNS; and on a LoKr one with LoCon on the image q/k/v, dora_wd and a full entry,
    MIXED_LOKR_DORA) trains, resumes bit-exact (losses and export), and its export's modules, loaded by
    lycoris-lora's create_network_from_weights onto kohya's fused Linears (the trained parts' base weights
    stacked) and CLIP-L, are LokrModule / LohaModule / LoConModule / FullModule as the file gives them and
    compute the trained layers' outputs; the export holds `dora_scale` on exactly the modules lycoris-lora's
    create_network decomposes from the same file and network_args, in their shapes (each kind's fused
    Linears whole, in that kind's pass: runtime/mixed_kinds.py; issue 12, was DBS403 / a spec's DBS578 /
    DBS583), a module per input column being create_network's own loaded with the export's tensors
    (make_module_from_state_dict builds dora_scale per output row); its adapter folders load back onto the
    plain transformer as `dbspec sample` loads them."""
    from dbspec.runtime.weights import load_peft_adapters
    from tests.runtime.lycoris_flow_kit import stacked_linear
    from tests.unit.convert_kit import flux_lycoris, plan_of

    base = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""', "schedule.steps=2"]
    base += ['checkpoints.exports=["kohya_lora"]', "model.t5_max_length=16"]
    columns = (MIXED_COLUMNS, {"wd_on_output": "False"})
    text, wd = columns if algo == "locon" else (MIXED_LOKR_DORA, {"dora_wd": "True"})
    args = f'"algo={algo}" "preset={_file(tmp_path, text)}" ' + " ".join(f'"{k}={v}"' for k, v in wd.items())
    plan = plan_of(flux_lycoris(tmp_path, args), tmp_path, base)
    own = {"locon": "lora"}.get(algo, algo)
    a = plan.adapter
    assert a.kind == own and a.fused and a.dora_form == "lycoris" and a.dora == (algo == "lokr")
    assert {b.kind for b in a.blocks} >= {"lora", "lokr", "loha"} - {own}
    # the LoKr entry's own weight_decompose per input column; img_in's LoHa block undecomposed beside dora_wd
    assert a.dora_axis == ("input" if algo == "locon" else "output")
    held = [(b.kind, b.dora) for b in a.blocks if b.dora != "adapter"]
    assert held == ([("lokr", "on")] if algo == "locon" else [("loha", "off")])
    planned = compile_spec(_spec(tmp_path), [*base, "output.dir=whole"])
    whole = execute(planned, keep_models=True)
    parts = compile_spec(_spec(tmp_path), [*base, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    tensors, again = (
        load_file(str(next(Path(r.final).glob("*.kohya.safetensors")))) for r in (whole, second)
    )
    assert tensors.keys() == again.keys() and all(torch.equal(tensors[k], again[k]) for k in tensors)

    unet = whole.components.unet.eval()
    attn, single = unet.transformer_blocks[0].attn, unet.single_transformer_blocks[0]
    layers = {
        "double_blocks.0.img_attn.qkv": (attn.to_q, attn.to_k, attn.to_v),
        "double_blocks.0.txt_attn.qkv": (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
        "double_blocks.0.img_attn.proj": (attn.to_out[0],),
        "single_blocks.0.linear1": (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
        "single_blocks.0.linear2": (single.proj_out,),
        "img_in": (unet.x_embedder,),
    }
    others = _CLASS[own]  # the layers no entry gives another algorithm
    kinds = {
        "double_blocks.0.img_attn.qkv": "LokrModule" if algo == "locon" else "LoConModule",
        "double_blocks.0.txt_attn.qkv": others,
        "double_blocks.0.img_attn.proj": others if algo == "locon" else "FullModule",
        "single_blocks.0.linear1": "LohaModule",
        "single_blocks.0.linear2": others,
        "img_in": "LohaModule",
    }
    names = {k.split(".")[0] for k in tensors if k.startswith("lora_unet_")}
    assert {"lora_unet_" + p.replace(".", "_") for p in layers} <= names
    assert not any("to_q" in n or "proj_mlp" in n or "x_embedder" in n for n in names)  # kohya's names only
    kohya = _tree({path: stacked_linear(found) for path, found in layers.items()})
    clip = _kohya_clip(_unwrapped(whole.components.text_encoders[0]))  # kohya's text_model. level
    clip_layers = dict(whole.components.text_encoders[0].named_modules())
    # the modules lycoris-lora's create_network decomposes from the same file and network_args
    network = kept_lycoris_presets(monkeypatch)
    preset = str(tmp_path / "mixed.toml")
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, [clip, nn.Module()], kohya, algo=algo, preset=preset, **wd
    )
    built = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    assert set(built) <= {k.split(".")[0] for k in tensors}
    theirs = {n: tuple(m.dora_scale.shape) for n, m in built.items() if getattr(m, "wd", False)}
    ours = {n: tuple(tensors[f"{n}.dora_scale"].shape) for n in built if f"{n}.dora_scale" in tensors}
    assert ours == theirs and {type(built[n]).__name__ for n in theirs} == (
        {"LokrModule"} if algo == "locon" else {"LokrModule", "LoConModule", "LohaModule"}
    )
    assert not {"lora_unet_img_in", "lora_unet_double_blocks_0_img_attn_proj"} & set(ours)
    columns = [n for n, shape in ours.items() if shape[0] == 1]  # (1, in): create_network's module loads them
    assert bool(columns) == (algo == "locon")
    for name in columns:
        built[name].load_state_dict(
            {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}
        )
    rest = {k: v for k, v in tensors.items() if k.split(".")[0] not in columns}
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [clip, nn.Module()], kohya, rest)
    loaded = {m.lora_name: m for m in [*network.unet_loras, *network.text_encoder_loras]}
    network.apply_to([clip, nn.Module()], kohya, apply_text_encoder=True, apply_unet=True)
    for name in columns:
        built[name].apply_to()
        loaded[name] = built[name]
    torch.manual_seed(0)
    with torch.no_grad():
        for path, found in layers.items():
            module = loaded["lora_unet_" + path.replace(".", "_")]
            assert type(module).__name__ == kinds[path], path
            x = torch.randn(3, found[0].base_layer.in_features)
            trained = torch.cat([p(x) for p in found], dim=-1)
            assert not torch.allclose(trained, torch.cat([p.base_layer(x) for p in found], -1), atol=1e-7), (
                path
            )
            torch.testing.assert_close(kohya.get_submodule(path)(x), trained, rtol=0, atol=1e-5)
        name = "encoder.layers.0.self_attn.q_proj"
        module = loaded["lora_te1_text_model_" + name.replace(".", "_")]
        assert type(module).__name__ == "LohaModule"
        trained_q = clip_layers[name]
        x = torch.randn(3, trained_q.base_layer.in_features)
        assert not torch.allclose(trained_q(x), trained_q.base_layer(x), atol=1e-7)
        torch.testing.assert_close(
            clip.get_submodule(f"text_model.{name}")(x), trained_q(x), rtol=0, atol=1e-5
        )

    # the adapter folders (`unet/` and `unet/<kind>/`) on the plain transformer, as `dbspec sample` loads them
    again = _unwrapped(unet)
    for attr in ("peft_config", "dbspec_kind_configs"):
        if hasattr(again, attr):
            delattr(again, attr)
    a = planned.adapter
    assert load_peft_adapters(Path(whole.final), {"unet": again}, a.lokr_unit_scale, fused_lokr=a) == ["unet"]
    with torch.no_grad():
        for found in layers.values():
            reloaded = [again.get_submodule(_path_in(unet, p)) for p in found]
            x = torch.randn(3, found[0].base_layer.in_features)
            trained = torch.cat([p(x) for p in found], dim=-1)
            torch.testing.assert_close(
                torch.cat([p(x) for p in reloaded], dim=-1), trained, rtol=0, atol=1e-5
            )
    # the export starts a run of the file (runtime/mixed_init.py): every trained tensor the first run's, each
    # decomposed layer's magnitude (a fused LoConModule's dora_scale rows split into its parts, a (1, in) one
    # into the magnitude they share) included
    from tests.runtime.test_flow_init import _loaded

    export = next(Path(whole.final).glob("*.kohya.safetensors"))
    started = compile_spec(
        _spec(tmp_path),
        [*base, "output.dir=again", f'adapter.init_weights="{export}"', "adapter.init_partial=true"],
    )
    comps, count = _loaded(started)
    assert count == len({k.split(".")[0] for k in tensors})
    for ours, theirs in ((comps.unet, unet), (comps.text_encoders[0], whole.components.text_encoders[0])):
        trained = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
        loaded = {n: p for n, p in ours.named_parameters() if p.requires_grad}
        assert loaded.keys() == trained.keys() and any("dora_scale" in n for n in loaded) == (
            ours is comps.unet or algo == "lokr"
        )
        for name, param in loaded.items():  # a full layer's copy is W + (trained - W): float rounding
            atol = 1e-6 if "lora_full" in name else 0.0
            torch.testing.assert_close(param, trained[name], rtol=0, atol=atol, msg=name)


def _path_in(model: nn.Module, layer: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is layer)


# SD3: LoHa on the x blocks' q/k/v, LoCon on the context blocks' q/k/v, the network's LoKr on the projections
MIXED_SD3 = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj"]
text_encoder_target_module = []

[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "loha"
dim = 2
[name_algo_map."joint_blocks.*.context_block.attn.qkv"]
algo = "locon"
dim = 3
alpha = 1
"""


def test_mixed_sd3_run_resumes_and_loads_in_lycoris(tmp_path):
    """A tiny SD3 run of a LoKr network whose file gives the x blocks' fused q/k/v LoHa and the context
    blocks' LoCon: it resumes bit-exact, and lycoris-lora's create_network_from_weights loads its export
    onto kohya's fused Linears as LohaModule / LoConModule / LokrModule computing the trained outputs."""
    from tests.runtime.lycoris_flow_kit import stacked_linear
    from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

    (tmp_path / "mixed.toml").write_text(MIXED_SD3, encoding="utf-8")
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
    base = ["model.base=builtin:tiny-sd3", "model.text_encoder_files=[]", 'model.vae=""', "schedule.steps=2"]
    base += ['checkpoints.exports=["kohya_lora"]', "model.t5_max_length=16"]
    planned = compile_spec(out_path(tmp_path), [*base, "output.dir=whole"])
    assert planned.adapter.fused and sorted(b.kind for b in planned.adapter.blocks) == ["loha", "lora"]
    whole = execute(planned, keep_models=True)
    parts = compile_spec(out_path(tmp_path), [*base, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    tensors, again = (
        load_file(str(next(Path(r.final).glob("*.kohya.safetensors")))) for r in (whole, second)
    )
    assert tensors.keys() == again.keys() and all(torch.equal(tensors[k], again[k]) for k in tensors)
    attn = whole.components.unet.eval().transformer_blocks[0].attn
    layers = {
        "joint_blocks.0.x_block.attn.qkv": ((attn.to_q, attn.to_k, attn.to_v), "LohaModule"),
        "joint_blocks.0.context_block.attn.qkv": (
            (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
            "LoConModule",
        ),
        "joint_blocks.0.x_block.attn.proj": ((attn.to_out[0],), "LokrModule"),
        "joint_blocks.0.context_block.attn.proj": ((attn.to_add_out,), "LokrModule"),
    }
    kohya_tree = _tree({path: stacked_linear(found) for path, (found, _) in layers.items()})
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [], kohya_tree, tensors)
    loaded = {m.lora_name: m for m in network.unet_loras}
    network.apply_to([], kohya_tree, apply_text_encoder=False, apply_unet=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for path, (found, cls) in layers.items():
            assert type(loaded["lora_unet_" + path.replace(".", "_")]).__name__ == cls, path
            x = torch.randn(3, found[0].base_layer.in_features)
            trained = torch.cat([p(x) for p in found], dim=-1)
            assert not torch.allclose(trained, torch.cat([p.base_layer(x) for p in found], -1), atol=1e-7), (
                path
            )
            torch.testing.assert_close(kohya_tree.get_submodule(path)(x), trained, rtol=0, atol=1e-5)
