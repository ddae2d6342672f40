"""lycoris.kohya --dim_from_weights on Flux with a LoKr / LoHa file (issue 12;
dbspec/convert/kohya/lycoris_flow_weights.py): lycoris-lora 4.1.3 writes the file (its LokrModule /
LohaModule on tiny-flux's layers as kohya's Flux holds them, fused q/k/v stacked, every factor random) and
rebuilds it with create_network_from_weights on a tree of kohya's names; the converted spec, run on tiny-flux,
starts every layer where LyCORIS's rebuilt modules are (same outputs; the single block's linear1 at a rank,
alpha and LoKr split of its own: a block), and the LoKr run trains and resumes bit-exact."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.test_flow_init import _loaded
from tests.runtime.test_lycoris_flux import BASE, _double_block_layers, _fused_linear

lycoris_kohya = pytest.importorskip("lycoris.kohya")
from lycoris.modules.ia3 import IA3Module  # noqa: E402
from lycoris.modules.loha import LohaModule  # noqa: E402
from lycoris.modules.lokr import LokrModule  # noqa: E402

LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
RUN = [
    "model.base=builtin:tiny-flux",
    "model.text_encoder_files=[]",
    'model.vae=""',
    "model.t5_max_length=16",
]


def _layers(model, final: bool = False) -> dict[str, tuple]:
    """kohya name -> tiny-flux's parts: double block 0's attention, single block 0's linear1, img_in (and
    with `final` the final layer)."""
    single = model.single_transformer_blocks[0]
    layers = _double_block_layers(model.transformer_blocks[0].attn)
    layers["lora_unet_single_blocks_0_linear1"] = (
        single.attn.to_q,
        single.attn.to_k,
        single.attn.to_v,
        single.proj_mlp,
    )
    layers["lora_unet_img_in"] = (model.x_embedder,)
    if final:  # the single blocks' proj_out left out
        layers["lora_unet_final_layer_linear"] = (model.proj_out,)
    return layers


def _tree(linears: dict[str, nn.Linear]) -> nn.Module:
    """A module tree whose named_modules() are kohya's names (lora_unet_ dropped, `_` back to the paths)."""
    paths = {
        "double_blocks_0_img_attn_qkv": "double_blocks.0.img_attn.qkv",
        "double_blocks_0_txt_attn_qkv": "double_blocks.0.txt_attn.qkv",
        "double_blocks_0_img_attn_proj": "double_blocks.0.img_attn.proj",
        "double_blocks_0_txt_attn_proj": "double_blocks.0.txt_attn.proj",
        "single_blocks_0_linear1": "single_blocks.0.linear1",
        "img_in": "img_in",
        "final_layer_linear": "final_layer.linear",
    }
    root = nn.Module()
    for name, linear in linears.items():
        *heads, last = paths[name.removeprefix("lora_unet_")].split(".")
        node = root
        for head in heads:
            if not hasattr(node, head):
                node.add_module(head, nn.Module())
            node = getattr(node, head)
        node.add_module(last, linear)
    return root


# single block 0's linear1 (112 x 16) at a rank, alpha and LoKr split of its own (one [[adapter.blocks]])
OWN = {LokrModule: (3, 0.5, {"factor": 8, "decompose_both": True}), LohaModule: (3, 0.5, {})}


def _file(tmp_path, cls, rank: int, options: dict):
    from dbspec.runtime.tiny import build_pipeline

    torch.manual_seed(5)
    tensors, linears = {}, {}
    for name, parts in _layers(build_pipeline(BASE).transformer.float(), True).items():
        linears[name] = _fused_linear(parts)
        own = OWN[cls] if cls in OWN and name.endswith("single_blocks_0_linear1") else (rank, 1.5, options)
        module = cls(name, linears[name], 1.0, own[0], own[1], **own[2])
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    return file, linears


def _converted(tmp_path, allow: bool = False):
    from tests.unit.convert_kit import component_file, errors, images, kohya, out_path

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        allow=allow,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "black-forest-labs/FLUX.1-dev --clip_l clip_l.safetensors --t5xxl t5xxl.safetensors "
        "--ae ae.safetensors "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=8 --network_alpha=8 "
        "--network_args algo=locon --network_weights prev.safetensors --dim_from_weights "
        "--learning_rate=1e-2 --max_train_steps=3 --save_every_n_steps 2 --save_model_as=safetensors "
        "--output_dir=out --model_prediction_type raw --guidance_scale 1.0",
    )
    if allow:
        return outcome
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return out_path(tmp_path)


@pytest.mark.parametrize(
    ("cls", "rank", "options"),
    [(LokrModule, 1, {"factor": 4, "decompose_both": True}), (LohaModule, 2, {})],
)
def test_factor_file_starts_where_lycoris_rebuilds_it(tmp_path, cls, rank, options):
    file, linears = _file(tmp_path, cls, rank, options)
    network, _ = lycoris_kohya.create_network_from_weights(1.0, str(file), None, None, _tree(linears))
    assert {type(m) for m in network.unet_loras} == {cls} and len(network.unet_loras) == 7
    for module in network.unet_loras:
        module.apply_to()
    spec = _converted(tmp_path)
    plan = compile_spec(spec, RUN)
    kind = "lokr" if cls is LokrModule else "loha"
    assert (plan.adapter.kind, plan.adapter.rank, plan.adapter.alpha) == (kind, rank, 1.5)
    assert [f.name for f in plan.adapter.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    if kind == "lokr":
        assert (plan.adapter.factor, plan.adapter.decompose_both) == (4, True)
    zero, block = plan.adapter.blocks  # the single blocks' proj_out out; linear1's parts, all of them
    assert zero.rank == 0 and re.search(zero.pattern, "single_transformer_blocks.0.proj_out")
    assert not re.search(zero.pattern, "proj_out")
    assert (block.rank, block.alpha, block.factor) == (3, 0.5, 8 if kind == "lokr" else 0)
    assert all(re.search(block.pattern, f"single_transformer_blocks.0.{p}") for p in LINEAR1)
    assert not re.search(block.pattern, "transformer_blocks.0.attn.to_q")
    comps, count = _loaded(plan)
    assert count == 7 and not hasattr(comps.unet.single_transformer_blocks[0].proj_out, "base_layer")
    torch.manual_seed(0)
    for name, parts in _layers(comps.unet.float().eval(), True).items():
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
            theirs = linears[name](x)
            plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
        assert not torch.allclose(ours, plain, atol=1e-3), name
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    if kind == "loha":
        return
    whole = execute(compile_spec(spec, [*RUN, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished" and whole.steps == 3
    parts = compile_spec(spec, [*RUN, "output.dir=parts"])
    assert execute(parts, stop_after=2).status == "interrupted"
    second = execute(parts, resume=True, keep_models=True)
    assert second.status == "finished" and second.losses[-1:] == whole.losses[-1:]
    ours = dict(whole.components.unet.named_parameters())
    for name, p in second.components.unet.named_parameters():
        assert torch.equal(p, ours[name]), name
    # the trained export, rebuilt by LyCORIS's create_network_from_weights, computes the trained layers
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    trained = _layers(whole.components.unet.float().eval(), True)
    fresh = {name: _fused_linear([p.base_layer for p in parts]) for name, parts in trained.items()}
    network, _ = lycoris_kohya.create_network_from_weights(1.0, str(export), None, None, _tree(fresh))
    assert len(network.unet_loras) == 7
    for module in network.unet_loras:
        module.apply_to()
    for name, parts in trained.items():
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            torch.testing.assert_close(
                fresh[name](x), torch.cat([p(x) for p in parts], -1), rtol=0, atol=1e-5
            )


def test_ia3_file_stops_lycoris(tmp_path):
    """lycoris-lora 4.1.3's get_module hands IA3Module.make_module_from_state_dict (weight, on_input), which
    takes weight alone: kohya stops (the converter's DBS402)."""
    from tests.unit.convert_kit import codes

    file, linears = _file(tmp_path, IA3Module, 1, {})
    with pytest.raises(TypeError):
        lycoris_kohya.create_network_from_weights(1.0, str(file), None, None, _tree(linears))
    outcome = _converted(tmp_path, allow=True)
    assert "DBS402" in codes(outcome)


def test_factor_file_with_clip_modules_starts_where_lycoris_rebuilds_it(tmp_path):
    """A LoHa file whose CLIP-L modules (lora_te1_*, LyCORIS's first encoder) cover the attention Linears of
    every layer: text_encoder_targets (their paths) at the file's rank, and whose T5-XXL modules (lora_te2_*,
    the second) cover block 0's attention: train.t5 (dbspec's T5 LoHa); dbspec's run starts CLIP-L's and
    T5's layers where LyCORIS's create_network_from_weights on kohya's encoder list [CLIP-L, T5-XXL] rebuilds
    them."""
    from dbspec.runtime.tiny import build_pipeline

    file, linears = _file(tmp_path, LohaModule, 2, {})
    clip = build_pipeline(BASE).text_encoder.float()
    tensors = dict(load_file(str(file)))
    torch.manual_seed(6)
    names = {}
    for path, layer in clip.named_modules():
        if path.endswith(("q_proj", "k_proj", "v_proj", "out_proj")):
            name = "lora_te1_" + f"text_model.{path}".replace(".", "_")
            module = LohaModule(name, copy.deepcopy(layer), 1.0, 2, 1.5)
            for p in module.parameters():
                torch.nn.init.normal_(p, std=0.2)
            tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
            names[path] = name
    t5 = build_pipeline(BASE).text_encoder_2.float()
    for path, layer in t5.named_modules():
        if re.fullmatch(r"encoder\.block\.0\.layer\.0\.SelfAttention\.[qkvo]", path):
            name = "lora_te2_" + path.replace(".", "_")
            module = LohaModule(name, layer, 1.0, 2, 1.5)
            for p in module.parameters():
                torch.nn.init.normal_(p, std=0.2)
            tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
            names[path] = name
    save_file(tensors, str(file))
    theirs = copy.deepcopy(clip)
    kohya_clip = nn.Module()  # kohya's transformers (4.54.1) CLIPTextModel: its layers under text_model
    kohya_clip.add_module("text_model", theirs)
    network, _ = lycoris_kohya.create_network_from_weights(
        1.0, str(file), None, [kohya_clip, t5], _tree(linears)
    )
    assert len(network.text_encoder_loras) == len(names) == 12 + 4
    for module in network.text_encoder_loras:
        module.apply_to()
    plan = compile_spec(_converted(tmp_path), RUN)
    assert plan.adapter.text_encoder_targets[:2] == (
        "encoder.layers.0.self_attn.k_proj",
        "encoder.layers.0.self_attn.out_proj",
    )
    comps, count = _loaded(plan)
    assert count == 7 + 12 + 4 and plan.train_text_encoder and plan.adapter.t5_targets
    ours = dict(comps.text_encoders[0].float().eval().named_modules())
    ours_t5 = dict(comps.text_encoders[1].float().eval().named_modules())
    torch.manual_seed(0)
    pairs = [(ours, path, layer) for path, layer in theirs.named_modules() if path in names]
    pairs += [(ours_t5, path, layer) for path, layer in t5.named_modules() if path in names]
    for ours, path, layer in pairs:
        x = torch.randn(3, ours[path].base_layer.in_features)
        with torch.no_grad():
            assert not torch.allclose(ours[path](x), ours[path].base_layer(x), atol=1e-3), path
            torch.testing.assert_close(ours[path](x), layer(x), rtol=0, atol=1e-5)


def test_locon_file_with_dora_scale_starts_where_lycoris_rebuilds_it(tmp_path):
    """A LoCon file whose modules hold `dora_scale` (LyCORIS's LoConModule with weight_decompose, one
    magnitude per output row of kohya's Linear): dora = true with dora_form "lycoris", the magnitudes loaded
    by runtime/flow_init.py; every layer starts where create_network_from_weights rebuilds it."""
    from lycoris.modules.locon import LoConModule

    file, linears = _file(tmp_path, LoConModule, 2, {"weight_decompose": True})
    network, _ = lycoris_kohya.create_network_from_weights(1.0, str(file), None, None, _tree(linears))
    assert all(m.wd for m in network.unet_loras) and len(network.unet_loras) == 7
    for module in network.unet_loras:
        module.apply_to()
    plan = compile_spec(_converted(tmp_path), RUN)
    assert (plan.adapter.kind, plan.adapter.dora, plan.adapter.dora_form) == ("lora", True, "lycoris")
    comps, count = _loaded(plan)
    assert count == 7
    torch.manual_seed(0)
    for name, parts in _layers(comps.unet.float().eval(), True).items():
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
            torch.testing.assert_close(ours, linears[name](x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("cls", "rank", "options"),
    [(LokrModule, 1, {"factor": 4, "decompose_both": True}), (LohaModule, 2, {})],
)
def test_factor_file_with_dora_scale_in_some_modules(tmp_path, cls, rank, options):
    """A LoKr / LoHa file whose fused q/k/v modules hold `dora_scale` (LyCORIS's module with
    weight_decompose) and the rest not: create_network_from_weights builds those alone with weight_decompose
    (make_module_from_state_dict); dbspec's blocks give exactly those layers LyCORIS's decomposition
    (`dora = "on"` over every part; was DBS403), each layer starts where LyCORIS rebuilds it (the magnitudes
    the file's, outputs to 1e-5), trains and resumes bit-exact, and its export rebuilds in lycoris-lora with
    `dora_scale` on the same modules and the trained outputs."""
    from dbspec.runtime.lycoris_dora import dora_scale_of
    from dbspec.runtime.tiny import build_pipeline

    torch.manual_seed(5)
    tensors, linears = {}, {}
    for name, parts in _layers(build_pipeline(BASE).transformer.float(), True).items():
        linears[name] = _fused_linear(parts)
        own = OWN[cls] if name.endswith("single_blocks_0_linear1") else (rank, 1.5, options)
        module = cls(
            name, linears[name], 1.0, own[0], own[1], weight_decompose=name.endswith("qkv"), **own[2]
        )
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.2)
        tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
    file = tmp_path / "prev.safetensors"
    save_file(tensors, str(file))
    network, _ = lycoris_kohya.create_network_from_weights(1.0, str(file), None, None, _tree(linears))
    held = {m.lora_name for m in network.unet_loras if m.wd}
    assert len(held) == 2 and len(network.unet_loras) == 7
    for module in network.unet_loras:
        module.apply_to()
    spec = _converted(tmp_path)
    plan = compile_spec(spec, RUN)
    assert not plan.adapter.dora and [b.dora for b in plan.adapter.blocks].count("on") == 1
    comps, count = _loaded(plan)
    assert count == 7
    torch.manual_seed(0)
    for name, parts in _layers(comps.unet.float().eval(), True).items():
        scales = [dora_scale_of(p, "default") for p in parts]
        assert all((s is not None) == (name in held) for s in scales), name
        if name in held:
            torch.testing.assert_close(torch.cat(scales), tensors[f"{name}.dora_scale"], rtol=0, atol=0)
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
            assert not torch.allclose(ours, torch.cat([p.base_layer(x) for p in parts], -1), atol=1e-3)
            torch.testing.assert_close(ours, linears[name](x), rtol=0, atol=1e-5)
    whole = execute(compile_spec(spec, [*RUN, "output.dir=whole"]), keep_models=True)
    assert whole.status == "finished" and whole.steps == 3
    split = compile_spec(spec, [*RUN, "output.dir=parts"])
    assert execute(split, stop_after=2).status == "interrupted"
    second = execute(split, resume=True, keep_models=True)
    assert second.status == "finished" and second.losses[-1:] == whole.losses[-1:]
    ours = dict(whole.components.unet.named_parameters())
    for name, p in second.components.unet.named_parameters():
        assert torch.equal(p, ours[name]), name
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    assert {k.split(".")[0] for k in saved if k.endswith(".dora_scale")} == held
    assert any(not torch.equal(saved[k], tensors[k]) for k in saved if k.endswith(".dora_scale"))
    trained = _layers(whole.components.unet.float().eval(), True)
    fresh = {name: _fused_linear([p.base_layer for p in parts]) for name, parts in trained.items()}
    loaded, _ = lycoris_kohya.create_network_from_weights(1.0, str(export), None, None, _tree(fresh))
    assert {m.lora_name for m in loaded.unet_loras if m.wd} == held
    for module in loaded.unet_loras:
        module.apply_to()
    for name, parts in trained.items():
        x = torch.randn(3, parts[0].base_layer.in_features)
        with torch.no_grad():
            torch.testing.assert_close(
                fresh[name](x), torch.cat([p(x) for p in parts], -1), rtol=1e-5, atol=1e-5
            )
