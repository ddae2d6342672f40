"""`model.merge_adapters` for Flux and SD3 (kohya `--base_weights` with flux_train_network.py /
sd3_train_network.py; runtime/flow_merge.py): a file in kohya's lora_flux layout (the original model's fused
layers) merged into tiny-flux's diffusers layers equals kohya's merge of the same file into the original fused
weights, built here independently by stacking the parts' rows (to_q, to_k, to_v [, proj_mlp]) and merged
with kohya's formula; a tiny run trains on the merged base and resumes bit-exact; the plan refuses SD3's
x_embedder (DBS392)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dbspec.frontend import plan_spec
from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.flow_merge import denoiser_layers, merge_flow_file, text_layers
from tests.runtime.runspec import CPU, compile_spec, write_spec

MERGE = '\n[[model.merge_adapters]]\npath = "style.safetensors"\nmultiplier = 0.7\n'
LORA = '[adapter]\nkind = "lora"\nrank = 2\n'
BASE = 'base = "builtin:tiny-flux"\n'
TE = "lora_te1_text_model_encoder_layers_0_mlp_fc1"


def _original(unet) -> dict[str, torch.Tensor]:
    """Some of the original Flux model's Linear weights, from diffusers' by Black Forest Labs' layout (q, k, v
    stacked; single blocks' linear1 is q, k, v, then the MLP input)."""
    double, single = unet.transformer_blocks[0], unet.single_transformer_blocks[0]
    a = double.attn
    return {
        "lora_unet_double_blocks_0_img_attn_qkv": torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight]),
        "lora_unet_double_blocks_0_txt_attn_qkv": torch.cat(
            [a.add_q_proj.weight, a.add_k_proj.weight, a.add_v_proj.weight]
        ),
        "lora_unet_double_blocks_0_img_mod_lin": double.norm1.linear.weight,
        "lora_unet_single_blocks_0_linear1": torch.cat(
            [
                single.attn.to_q.weight,
                single.attn.to_k.weight,
                single.attn.to_v.weight,
                single.proj_mlp.weight,
            ]
        ),
        "lora_unet_single_blocks_0_linear2": single.proj_out.weight,
    }


def _te(encoder) -> torch.Tensor:
    return getattr(encoder, "text_model", encoder).encoder.layers[0].mlp.fc1.weight


def _file(tmp_path: Path, unet, encoder) -> Path:
    """A kohya lora_flux file (fp16 tensors): shared-down fused layers (rank 4), a split_qkv fused layer (the
    four parts' downs stacked, rank 8, ups block-diagonal), plain layers, a CLIP-L layer, and img_in (outside
    kohya's blocks: ignored)."""
    g = torch.Generator().manual_seed(7)
    tensors = {}
    shapes = {name: tuple(w.shape) for name, w in _original(unet).items()}
    shapes[TE] = tuple(_te(encoder).shape)
    shapes["lora_unet_img_in"] = tuple(unet.x_embedder.weight.shape)
    for name, (rows, width) in shapes.items():
        rank = 8 if name.endswith("linear1") else 4
        up = torch.randn(rows, rank, generator=g)
        if name.endswith("linear1"):  # split_qkv: each part's up on its own column block
            mask = torch.zeros(rows, rank)
            inner = unet.single_transformer_blocks[0].attn.to_q.weight.shape[0]
            parts = [inner, inner, inner, rows - 3 * inner]
            start = 0
            for i, n in enumerate(parts):
                mask[start : start + n, 2 * i : 2 * i + 2] = 1
                start += n
            up = up * mask
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, width, generator=g).half()
        tensors[f"{name}.lora_up.weight"] = up.half()
        if name.endswith("img_mod_lin"):  # alpha 0: the rank (scale 1)
            tensors[f"{name}.alpha"] = torch.tensor(0.0)
        elif name != "lora_unet_img_in":  # kohya never reads img_in's (it needs every other module's)
            tensors[f"{name}.alpha"] = torch.tensor(float(rank) / 2)
    path = tmp_path / "style.safetensors"
    save_file(tensors, str(path))
    return path


def _kohya_merge(weight: torch.Tensor, state: dict, name: str, multiplier: float, dtype) -> torch.Tensor:
    """kohya's LoRAInfModule.merge_to of one Linear (networks/lora_flux.py without split_dims), restated."""
    down, up = state[f"{name}.lora_down.weight"].float(), state[f"{name}.lora_up.weight"].float()
    rank = down.shape[0]
    alpha = state.get(f"{name}.alpha")
    scale = alpha.float() / rank if alpha is not None and float(alpha) != 0 else torch.tensor(1.0)
    return (weight.float() + multiplier * (up @ down) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_flux_file_merges_as_kohya_merges_the_fused_layers(tmp_path, dtype):
    spec = write_spec(tmp_path, base="builtin:tiny-flux", steps=2, extra=LORA)
    plain = compile_spec(spec)
    comps = family_runtime("flux").load(plain)
    unet, encoder = comps.unet.float(), comps.text_encoders[0].float()
    path = _file(tmp_path, unet, encoder)
    spec.write_text(spec.read_text().replace(BASE, BASE + MERGE))
    plan = compile_spec(spec)
    (merge,) = plan.model.merge_adapters
    assert (merge.components, merge.layers) == (("text_encoder", "unet"), 7)
    state = load_file(str(path))
    with torch.no_grad():
        expected = {n: _kohya_merge(w, state, n, 0.7, dtype) for n, w in _original(unet).items()}
        expected[TE] = _kohya_merge(_te(encoder), state, TE, 0.7, dtype)
        img_in = unet.x_embedder.weight.detach().clone()
    note = merge_flow_file(
        merge,
        "flux",
        denoiser_layers("flux", unet),
        text_layers("flux", comps.text_encoders, str(path)),
        dtype,
    )
    assert note.startswith(f"merged 6 layers of {path} x 0.7; 1 of its modules")
    with torch.no_grad():
        got = {n: w.to(dtype) for n, w in _original(unet).items()}
        got[TE] = _te(encoder).to(dtype)
    assert got.keys() == expected.keys()
    for name in got:
        assert torch.equal(got[name], expected[name]), name
    assert torch.equal(unet.x_embedder.weight, img_in)  # kohya's network from weights has no img_in
    # and the formula in float64 (the parts hold their rows of the fused update)
    fused = "lora_unet_double_blocks_0_img_attn_qkv"
    down, up = state[f"{fused}.lora_down.weight"].double(), state[f"{fused}.lora_up.weight"].double()
    delta = 0.7 * (up @ down) * (2.0 / 4)
    rows = unet.transformer_blocks[0].attn.to_k.weight.shape[0]
    before = _original(family_runtime("flux").load(plain).unet.float())[fused].double()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(
        unet.transformer_blocks[0].attn.to_k.weight.double(),
        (before + delta)[rows : 2 * rows].to(dtype).double(),
        rtol=tolerance,
        atol=tolerance,
    )


def test_a_run_on_a_merged_flux_base_trains_and_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, base="builtin:tiny-flux", steps=4, extra=LORA)
    comps = family_runtime("flux").load(compile_spec(spec))
    path = _file(tmp_path, comps.unet.float(), comps.text_encoders[0].float())
    spec.write_text(spec.read_text().replace(BASE, BASE + MERGE))
    whole = execute(compile_spec(spec, ["output.dir=whole"]), keep_models=True)
    q = whole.components.unet.transformer_blocks[0].attn.to_q
    plain_q = family_runtime("flux").load(compile_spec(spec)).unet.transformer_blocks[0].attn.to_q
    assert not torch.equal(getattr(q, "base_layer", q).weight.detach().cpu().float(), plain_q.weight.float())
    parts = compile_spec(spec, ["output.dir=parts"])
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted"
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert path.is_file()


def test_the_plan_refuses_sd3s_patch_embedding(tmp_path):
    spec = write_spec(tmp_path, base="builtin:tiny-sd3", steps=2, extra=LORA)
    text = spec.read_text().replace('base = "builtin:tiny-sd3"\n', 'base = "builtin:tiny-sd3"\n' + MERGE)
    spec.write_text(text)
    name = "lora_unet_x_embedder"
    save_file(
        {f"{name}.lora_down.weight": torch.zeros(2, 4), f"{name}.lora_up.weight": torch.zeros(4, 2)},
        str(tmp_path / "style.safetensors"),
    )
    diagnostics = plan_spec(spec, CPU, str(spec), []).diagnostics
    (error,) = [d for d in diagnostics if d.severity == "error"]
    assert error.code == "DBS392" and name in error.message


def test_the_plan_refuses_a_merged_module_without_alpha(tmp_path):
    """kohya's lora_flux network from weights looks up every merged module's alpha (a KeyError without one);
    img_in, which it never reads, may lack it."""
    spec = write_spec(tmp_path, base="builtin:tiny-flux", steps=2, extra=LORA)
    spec.write_text(spec.read_text().replace(BASE, BASE + MERGE))
    tensors = {}
    for name in ("lora_unet_img_in", "lora_unet_single_blocks_0_linear2"):
        tensors |= {
            f"{name}.lora_down.weight": torch.zeros(2, 4),
            f"{name}.lora_up.weight": torch.zeros(4, 2),
        }
    save_file(tensors, str(tmp_path / "style.safetensors"))
    diagnostics = plan_spec(spec, CPU, str(spec), []).diagnostics
    (error,) = [d for d in diagnostics if d.severity == "error"]
    assert error.code == "DBS391" and "lora_unet_single_blocks_0_linear2.alpha" in error.message


def _swap(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous Linear: (scale, shift) where SD3's original holds (shift, scale)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first])


def test_an_sd3_file_merges_as_kohya_merges_the_original_layers(tmp_path):
    spec = write_spec(tmp_path, base="builtin:tiny-sd3", steps=2, extra=LORA)
    plan = compile_spec(spec)
    unet = family_runtime("sd3").load(plan).unet.float()
    last = len(unet.transformer_blocks) - 1
    a, b = unet.transformer_blocks[0].attn, unet.transformer_blocks[last]
    original = {  # SD3's original MMDiT weights from diffusers' (AdaLayerNormContinuous' adaLN swapped)
        "lora_unet_joint_blocks_0_x_block_attn_qkv": torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight]),
        f"lora_unet_joint_blocks_{last}_context_block_adaLN_modulation_1": _swap(
            b.norm1_context.linear.weight
        ),
        "lora_unet_final_layer_adaLN_modulation_1": _swap(unet.norm_out.linear.weight),
        "lora_unet_context_embedder": unet.context_embedder.weight,
    }
    assert type(b.norm1_context).__name__ == "AdaLayerNormContinuous"
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for name, weight in original.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(4, weight.shape[1], generator=g).half()
        tensors[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], 4, generator=g).half()
        tensors[f"{name}.alpha"] = torch.tensor(1.0)
    path = tmp_path / "style.safetensors"
    save_file(tensors, str(path))
    with torch.no_grad():
        expected = {n: _kohya_merge(w, tensors, n, 0.7, torch.bfloat16) for n, w in original.items()}
    spec.write_text(
        spec.read_text().replace('base = "builtin:tiny-sd3"\n', 'base = "builtin:tiny-sd3"\n' + MERGE)
    )
    (merge,) = compile_spec(spec).model.merge_adapters
    note = merge_flow_file(merge, "sd3", denoiser_layers("sd3", unet), {}, torch.bfloat16)
    assert note == f"merged 4 layers of {path} x 0.7"
    with torch.no_grad():
        q, k, v = expected["lora_unet_joint_blocks_0_x_block_attn_qkv"].split(a.to_q.weight.shape[0])
        assert torch.equal(a.to_q.weight.bfloat16(), q) and torch.equal(a.to_v.weight.bfloat16(), v)
        assert torch.equal(a.to_k.weight.bfloat16(), k)
        context = expected[f"lora_unet_joint_blocks_{last}_context_block_adaLN_modulation_1"]
        assert torch.equal(b.norm1_context.linear.weight.bfloat16(), _swap(context))
        final = expected["lora_unet_final_layer_adaLN_modulation_1"]
        assert torch.equal(unet.norm_out.linear.weight.bfloat16(), _swap(final))
        embed = expected["lora_unet_context_embedder"]
        assert torch.equal(unet.context_embedder.weight.bfloat16(), embed)
