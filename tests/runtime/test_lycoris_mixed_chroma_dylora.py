"""A LyCORIS preset file giving Chroma's fused Linears DyLoRA beside a LoCon network (issue 12), as on Flux
(test_lycoris_mixed_flow_dylora.py): Chroma's blocks are Flux's fused Linears (chroma_rows.py), so a DyLoRA
entry there is one DyLoraModule per fused Linear, its parts sharing the down blocks and the drawn block
(runtime/dylora.py tie_fused_dylora). A tiny Chroma run trains and resumes bit-exact; each fused DyLoRA
layer's training forward for every block equals lycoris-lora 4.1.3's DyLoraModule (the parts' blocks, the
down once and the ups' rows stacked) on the stacked weight, every part drawing its fused layer's block; and
lycoris-lora's create_network_from_weights loads the export (DyLoRA's saved LoRA layout as LoConModules)
onto kohya's fused Linears with the trained outputs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from lycoris.modules.dylora import DyLoraModule
from safetensors.torch import load_file

from dbspec.runtime.dylora import DyloraLayer, draw_blocks
from dbspec.runtime.execute import execute
from tests.runtime.lycoris_flow_kit import stacked_linear
from tests.runtime.runspec import compile_spec
from tests.runtime.test_lycoris_mixed_flow import _tree

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# DyLoRA on the double blocks' image q/k/v (dim 4, alpha 2, blocks of 2) and on the single blocks' linear1
# (the network's dim and alpha, blocks of 1); the LoCon network on the text stream's q/k/v, the projections,
# linear2 and the approximator's first MLP
MIXED = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*",
    "distilled_guidance_layer.layers.0.*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "dylora"
dim = 4
alpha = 2
block_size = 2
[name_algo_map."single_blocks.*.linear1"]
algo = "dylora"
block_size = 1
"""
BASE = ["model.base=builtin:tiny-chroma", "model.text_encoder_files=[]", 'model.vae=""']
BASE += ['model.denoiser_file=""', "schedule.steps=2", 'checkpoints.exports=["kohya_lora"]']
BASE += ["model.t5_max_length=8"]


def _converted(tmp_path: Path):
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
        '--network_dim=4 --network_alpha=1 --network_args "algo=locon" "preset=mixed.toml" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
        "--timestep_sampling sigmoid --model_prediction_type raw --guidance_scale 0.0",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, BASE)


def _dylora_forward_equals_theirs(parts, alpha: float, unit: int, monkeypatch) -> None:
    """For every block b, the parts' training forward with b drawn equals DyLoraModule's on the stacked
    Linear (blocks 0..b at alpha / (b + 1)), which holds the parts' blocks."""
    first = parts[0]
    rank = first.r["default"]
    theirs = DyLoraModule("fused", stacked_linear(parts), 1.0, lora_dim=rank, alpha=alpha, block_size=unit)
    theirs.apply_to()
    with torch.no_grad():
        for i, (down, up) in enumerate(zip(theirs.down_list, theirs.up_list)):
            assert all(
                p.lora_dylora_down["default"][i] is first.lora_dylora_down["default"][i] for p in parts
            )
            down.copy_(first.lora_dylora_down["default"][i])
            up.copy_(torch.cat([p.lora_dylora_up["default"][i] for p in parts]))
    theirs.train()
    x = torch.randn(3, first.base_layer.in_features)
    for b in range(rank // unit):
        monkeypatch.setattr(random, "randint", lambda lo, hi, b=b: b)  # DyLoraModule's block draw
        for part in parts:
            part.train()
            part.drawn["default"] = b
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
            torch.testing.assert_close(ours, theirs(x), rtol=1e-6, atol=1e-6)
    for part in parts:
        part.eval()


def test_dylora_entries_on_chroma_train_resume_and_load_in_lycoris(tmp_path, monkeypatch):
    plan = _converted(tmp_path)
    a = plan.adapter
    assert plan.model.family == "chroma" and a.kind == "lora" and a.fused
    assert sorted((b.rank, b.alpha, b.unit) for b in a.blocks if b.kind == "dylora") == [
        (4, 1.0, 1),
        (4, 2.0, 2),
    ]
    from tests.unit.convert_kit import out_path

    whole = execute(compile_spec(out_path(tmp_path), [*BASE, "output.dir=whole"]), keep_models=True)
    parts = compile_spec(out_path(tmp_path), [*BASE, "output.dir=parts"])
    first = execute(parts, stop_after=1)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    tensors, again = (
        load_file(str(next(Path(r.final).glob("*.kohya.safetensors")))) for r in (whole, second)
    )
    assert tensors.keys() == again.keys() and all(torch.equal(tensors[k], again[k]) for k in tensors)

    unet = whole.components.unet.eval()
    attn, single = unet.transformer_blocks[0].attn, unet.single_transformer_blocks[0]
    approximator = unet.distilled_guidance_layer.layers[0]
    dylora = {
        "double_blocks.0.img_attn.qkv": ((attn.to_q, attn.to_k, attn.to_v), 2.0, 2),
        "single_blocks.0.linear1": (
            (single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
            1.0,
            1,
        ),
    }
    torch.manual_seed(0)
    for path, (found, alpha, unit) in dylora.items():
        assert all(isinstance(p, DyloraLayer) and p.unit == unit for p in found), path
        _dylora_forward_equals_theirs(found, alpha, unit, monkeypatch)
    for seed in range(6):  # every part of a fused layer trains the block its first part draws
        draw_blocks([unet], torch.Generator().manual_seed(seed))
        for found, _, _ in dylora.values():
            assert len({p.drawn["default"] for p in found}) == 1
    unet.eval()

    layers = {
        **{path: found for path, (found, _, _) in dylora.items()},
        "double_blocks.0.txt_attn.qkv": (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
        "double_blocks.0.img_attn.proj": (attn.to_out[0],),
        "single_blocks.0.linear2": (single.proj_out,),
        "distilled_guidance_layer.layers.0.in_layer": (approximator.linear_1,),
    }
    names = {k.split(".")[0] for k in tensors if k.startswith("lora_unet_")}
    assert {"lora_unet_" + p.replace(".", "_") for p in layers} <= names
    assert not any("to_q" in n or "proj_mlp" in n for n in names)  # kohya's names only
    assert tensors["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape[0] == 4  # the down once
    assert float(tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == 2.0
    kohya = _tree({path: stacked_linear(found) for path, found in layers.items()})
    network, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, [], kohya, tensors)
    network.apply_to([], kohya, apply_text_encoder=False, apply_unet=True)
    loaded = {m.lora_name: m for m in network.unet_loras}
    torch.manual_seed(0)
    with torch.no_grad():
        for path, found in layers.items():
            assert type(loaded["lora_unet_" + path.replace(".", "_")]).__name__ == "LoConModule", path
            x = torch.randn(3, found[0].base_layer.in_features)
            trained = torch.cat([p(x) for p in found], dim=-1)
            plain = torch.cat([p.base_layer(x) for p in found], dim=-1)
            assert not torch.allclose(trained, plain, atol=1e-7), path
            torch.testing.assert_close(kohya.get_submodule(path)(x), trained, rtol=0, atol=1e-5)
