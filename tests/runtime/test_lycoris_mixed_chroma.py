"""LyCORIS preset files giving Chroma layers other algorithms than the network's (issue 12), as on Flux
(test_lycoris_mixed_flow.py): Chroma's blocks are Flux's fused Linears (chroma_rows.py, the same
FusedProjections), so each kind's fused layers are tied as on Flux (runtime/mixed_kinds.py, fused.py,
fused_lokr.py, fused_loha.py). The converted plan's blocks against lycoris-lora 4.1.3's create_network on
kohya's Chroma tree rebuilt on the meta device (test_lycoris_preset_file_chroma.py's), and a tiny Chroma run:
it resumes bit-exact, and lycoris-lora's create_network_from_weights loads its export onto kohya's fused
Linears, each module of its kind computing what the trained layers compute."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_flow import _form, _tree
from tests.runtime.test_lycoris_preset_file_chroma import models  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# LoKr on the double blocks' image q/k/v, LoHa on the single blocks' linear1 and on img_in, LoCon on the
# approximator's first MLP (by name), the network's algorithm on the rest
MIXED = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in",
    "distilled_guidance_layer.layers.0.*"]
text_encoder_target_module = []
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
[name_algo_map."distilled_guidance_layer.layers.0.*"]
algo = "locon"
dim = 2
alpha = 2
"""


def _converted(tmp_path: Path, algo: str, overrides=None, flags: str = ""):
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    (tmp_path / "mixed.toml").write_text(MIXED, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("Chroma1-HD.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "Chroma1-HD.safetensors --model_type chroma --t5xxl t5xxl.safetensors --ae ae.safetensors "
        "--apply_t5_attn_mask --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim=4 --network_alpha=1 --network_args "algo={algo}" "preset=mixed.toml" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
        f"--timestep_sampling sigmoid --model_prediction_type raw --guidance_scale 0.0 {flags}",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, overrides)


def _adapted(path: str, adapter) -> bool:
    block = next((b for b in adapter.blocks if re.search(b.pattern, path)), None)
    hit = any(path == t or path.endswith("." + t) for t in adapter.denoiser_targets)
    return hit and (block is None or block.rank > 0)


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_mixed_chroma_file_builds_lycoris_modules(models, tmp_path, monkeypatch, algo):  # noqa: F811
    """Every kohya Chroma Linear the file adapts has, in the converted plan, the class, rank, scale and tensor
    shapes of the module lycoris-lora's create_network builds on it (the fused q/k/v and linear1 through all
    their diffusers parts), at Chroma1-HD's widths on the layers of other kinds."""
    kept_lycoris_presets(monkeypatch)
    kohya = copy.deepcopy(models["kohya"])
    with torch.device("meta"):
        kohya.img_in = nn.Linear(64, 3072)
        for i in range(19):
            kohya.get_submodule(f"double_blocks.{i}.img_attn").qkv = nn.Linear(3072, 9216)
        for i in range(38):
            kohya.get_submodule(f"single_blocks.{i}").linear1 = nn.Linear(3072, 21504)
    a = _converted(tmp_path, algo).adapter
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, models["te"], kohya, algo=algo, preset=str(tmp_path / "mixed.toml")
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
    assert a.kind == {"locon": "lora"}.get(algo, algo) and a.fused
    ours = {}
    for kohya_path, _, kind in chroma_model():
        parts = chroma_parts(kohya_path) if kind else ()
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
    assert theirs["lora_unet_single_blocks_0_linear1"][0] == "LohaModule"
    assert theirs["lora_unet_distilled_guidance_layer_layers_0_in_layer"][:2] == ("LoConModule", 2)


def test_mixed_chroma_run_resumes_and_loads_in_lycoris(tmp_path):
    """A tiny Chroma run of the file on a LoCon network trains, resumes bit-exact (losses and export), and
    lycoris-lora's create_network_from_weights loads its export onto kohya's fused Linears (the trained
    parts' base weights stacked) as LokrModule / LohaModule / LoConModule computing the trained outputs."""
    from tests.runtime.lycoris_flow_kit import stacked_linear

    base = ["model.base=builtin:tiny-chroma", "model.text_encoder_files=[]", 'model.vae=""']
    base += ['model.denoiser_file=""', "schedule.steps=2", 'checkpoints.exports=["kohya_lora"]']
    base += ["model.t5_max_length=8"]
    from tests.unit.convert_kit import out_path

    plan = _converted(tmp_path, "locon", overrides=base)
    assert plan.model.family == "chroma" and plan.adapter.fused
    assert {b.kind for b in plan.adapter.blocks} >= {"lokr", "loha"}
    whole = execute(compile_spec(out_path(tmp_path), [*base, "output.dir=whole"]), keep_models=True)
    parts = compile_spec(out_path(tmp_path), [*base, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    tensors, again = (
        load_file(str(next(Path(r.final).glob("*.kohya.safetensors")))) for r in (whole, second)
    )
    assert tensors.keys() == again.keys() and all(torch.equal(tensors[k], again[k]) for k in tensors)

    unet = whole.components.unet.eval()
    paths_of = {id(m): n for n, m in unet.named_modules()}
    attn, single = unet.transformer_blocks[0].attn, unet.single_transformer_blocks[0]
    approximator = unet.distilled_guidance_layer.layers[0]
    layers = {
        "double_blocks.0.img_attn.qkv": ((attn.to_q, attn.to_k, attn.to_v), "LokrModule"),
        "double_blocks.0.txt_attn.qkv": (
            (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
            "LoConModule",
        ),
        "double_blocks.0.img_attn.proj": ((attn.to_out[0],), "LoConModule"),
        "single_blocks.0.linear1": (
            (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
            "LohaModule",
        ),
        "img_in": ((unet.x_embedder,), "LohaModule"),
        "distilled_guidance_layer.layers.0.in_layer": ((approximator.linear_1,), "LoConModule"),
    }
    names = {k.split(".")[0] for k in tensors if k.startswith("lora_unet_")}
    assert {"lora_unet_" + p.replace(".", "_") for p in layers} <= names
    assert not any("to_q" in n or "proj_mlp" in n or "x_embedder" in n for n in names)  # kohya's names only
    assert tensors["lora_unet_distilled_guidance_layer_layers_0_in_layer.lora_down.weight"].shape[0] == 2
    kohya = _tree({path: stacked_linear(found) for path, (found, _) in layers.items()})
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [], kohya, tensors)
    loaded = {m.lora_name: m for m in network.unet_loras}
    network.apply_to([], kohya, apply_text_encoder=False, apply_unet=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for path, (found, cls) in layers.items():
            assert type(loaded["lora_unet_" + path.replace(".", "_")]).__name__ == cls, path
            x = torch.randn(3, found[0].base_layer.in_features)
            trained = torch.cat([p(x) for p in found], dim=-1)
            assert not torch.allclose(trained, torch.cat([p.base_layer(x) for p in found], -1), atol=1e-7), (
                path
            )
            torch.testing.assert_close(kohya.get_submodule(path)(x), trained, rtol=0, atol=1e-5)

    # --dim_from_weights with that export (was DBS403 on Chroma): a lokr run with loha / lora blocks, started
    # where LyCORIS's create_network_from_weights network above starts every layer (1e-5); trains, resumes
    from tests.runtime.test_flow_init import _loaded

    # the final layer (kohya's final_layer.linear, diffusers' proj_out, a suffix of every single block's
    # linear2) as a LoCon module beside them (was DBS403): a lora block ^(proj_out)$ and a rank-0 block for
    # the single blocks' linear2 the file lacks
    from lycoris.modules.locon import LoConModule

    final = copy.deepcopy(getattr(unet.proj_out, "base_layer", unet.proj_out))
    module = LoConModule("lora_unet_final_layer_linear", copy.deepcopy(final), 1.0, 2, 1.5)
    torch.manual_seed(5)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)
    single_out = [k for k in tensors if k.startswith("lora_unet_single_blocks_0_linear2.")]
    assert single_out  # held: only the other single blocks' (none in tiny-chroma) are kept out
    tensors = {k: v for k, v in tensors.items() if not k.startswith("lora_unet_single_blocks_0_linear2.")}
    tensors |= {f"lora_unet_final_layer_linear.{k}": v.detach() for k, v in module.state_dict().items()}
    # T5-XXL's modules of other kinds than the lokr adapter's (LoHa, full; was DBS403), kohya's lora_te2_
    # (flux_train_network.py hands LyCORIS [DummyCLIPL, T5-XXL]): train.t5 with text-encoder blocks of their
    # kinds
    from lycoris.modules.loha import LohaModule

    from dbspec.runtime.tiny import build_pipeline

    t5 = build_pipeline("builtin:tiny-chroma").text_encoder.float().eval()
    t5_names = {}
    for path, cls in (
        ("encoder.block.0.layer.0.SelfAttention.q", LohaModule),
        ("encoder.block.0.layer.0.SelfAttention.o", None),  # on DenseReluDense.wo it stops kohya (DBS402)
    ):
        name, layer = "lora_te2_" + path.replace(".", "_"), t5.get_submodule(path)
        if cls is None:  # FullModule's file tensors: its diff (T5's Linears have no bias)
            tensors[f"{name}.diff"] = torch.randn_like(layer.weight) * 0.05
        else:
            module = cls(name, copy.deepcopy(layer), 1.0, 2, 1.5)
            for p in module.parameters():
                torch.nn.init.normal_(p, std=0.2)
            tensors |= {f"{name}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
        t5_names[path] = name
    final_tree = _tree({"final_layer.linear": final})
    final_net, _ = lycoris_kohya.create_network_from_weights(
        1.0, None, None, [nn.Module(), t5], final_tree, tensors
    )
    assert [type(m).__name__ for m in final_net.unet_loras] == ["LoConModule"]
    built = {m.lora_name: type(m).__name__ for m in final_net.text_encoder_loras}
    assert built == dict(zip(t5_names.values(), ("LohaModule", "FullModule"), strict=True))
    final_net.apply_to([nn.Module(), t5], final_tree, apply_text_encoder=True, apply_unet=True)
    final_net.load_state_dict(tensors, strict=False)  # train_network.py's load_weights: W + 2 diff
    with torch.no_grad():  # kohya encodes through T5 with those modules applied (FullModule's wo would raise)
        t5(torch.tensor([[1, 2, 3]]))
    again = tmp_path / "again"
    again.mkdir()
    save_file(tensors, str(again / "prev.safetensors"))
    flags = "--dim_from_weights --network_weights prev.safetensors"
    replan = _converted(again, "locon", base, flags)
    r = replan.adapter
    assert (r.kind, r.init_partial) == ("lokr", True) and r.init_weights and r.fused
    assert {b.kind for b in r.blocks} - {"adapter"} == {"loha", "lora"}
    assert not _adapted("single_transformer_blocks.0.proj_out", r) and _adapted("proj_out", r)
    assert r.t5_targets and {b.kind for b in r.text_encoder_blocks} - {"adapter"} == {"loha", "full"}
    assert r.init_scale == 2.0  # T5's FullModule at W + 2 diff, as lycoris-lora builds and loads it
    comps, count = _loaded(replan)
    assert count == len({k.split(".")[0] for k in tensors})
    started = dict(comps.unet.eval().named_modules())
    with torch.no_grad():
        for found, _ in layers.values():
            x = torch.randn(3, found[0].base_layer.in_features)
            ours = torch.cat([started[paths_of[id(p)]](x) for p in found], dim=-1)
            path = next(k for k, (f, _) in layers.items() if f is found)
            torch.testing.assert_close(kohya.get_submodule(path)(x), ours, rtol=0, atol=1e-5)
        x = torch.randn(3, final.in_features)
        assert not torch.allclose(started["proj_out"](x), started["proj_out"].base_layer(x), atol=1e-6)
        torch.testing.assert_close(
            final_tree.final_layer.linear(x), started["proj_out"](x), rtol=0, atol=1e-5
        )
        single = started["single_transformer_blocks.0.proj_out"]  # the file lacks it: not adapted
        assert not hasattr(single, "base_layer"), type(single)
        ours_t5 = dict(comps.text_encoders[0].float().eval().named_modules())
        for path in t5_names:
            x = torch.randn(3, t5.get_submodule(path).in_features)
            assert not torch.allclose(ours_t5[path](x), ours_t5[path].base_layer(x), atol=1e-6), path
            torch.testing.assert_close(t5.get_submodule(path)(x), ours_t5[path](x), rtol=0, atol=1e-5)
    whole_again = execute(compile_spec(out_path(again), [*base, "output.dir=whole"]))
    parts = compile_spec(out_path(again), [*base, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole_again.losses

    # the adapter folders (`unet/` and `unet/<kind>/`) on the plain transformer, as `dbspec sample` loads them
    from dbspec.runtime.weights import load_peft_adapters

    plain = _unwrapped(unet)
    for attr in ("peft_config", "dbspec_kind_configs"):
        if hasattr(plain, attr):
            delattr(plain, attr)
    a = plan.adapter
    assert load_peft_adapters(Path(whole.final), {"unet": plain}, a.lokr_unit_scale, fused_lokr=a) == ["unet"]
    paths = {id(m): n for n, m in unet.named_modules()}
    with torch.no_grad():
        for found, _ in layers.values():
            reloaded = [plain.get_submodule(paths[id(p)]) for p in found]
            x = torch.randn(3, found[0].base_layer.in_features)
            trained = torch.cat([p(x) for p in found], dim=-1)
            torch.testing.assert_close(torch.cat([p(x) for p in reloaded], -1), trained, rtol=0, atol=1e-5)
