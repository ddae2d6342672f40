"""lycoris.kohya --dim_from_weights with a Diag-OFT, BOFT or GLoRA file on flux_train_network.py /
sd3_train_network.py (dbspec/convert/kohya/lycoris_flow_rebuilt.py): LyCORIS 4.1.3's
create_network_from_weights builds DiagOFTModule at lora_dim = the blocks' size, constraint = alpha,
rescaled where a `rescale` is held, GLoRAModule at a2's rows and the file's alpha, one module per fused
Linear: dbspec's fused Diag-OFT / GLoRA over the file's layers, started from it; what the fused form cannot
hold is DBS403 naming the module, what LyCORIS fails on DBS402 (runtime test:
tests/runtime/test_lycoris_flow_rebuilt_file.py)."""

from __future__ import annotations

import re

import numpy as np
from convert_kit import codes, errors, fate, messages, plan_of
from safetensors.numpy import save_file
from test_convert_lycoris_flow_dim_from_weights import W, _flux, _sd3

from dbspec.plan.boft import power2_factorization

QKV, PROJ, LINEAR1 = (
    "lora_unet_double_blocks_0_img_attn_qkv",
    "lora_unet_double_blocks_0_img_attn_proj",
    "lora_unet_single_blocks_0_linear1",
)


def _file(path, modules: dict[str, dict[str, tuple[int, ...]]], alphas: dict[str, float | None]):
    tensors = {}
    for name, shapes in modules.items():
        tensors |= {f"{name}.{k}": np.zeros(s, np.float16) for k, s in shapes.items()}
        if alphas.get(name, 0.0) is not None:
            tensors[f"{name}.alpha"] = np.array(alphas.get(name, 0.0), np.float32)
    save_file(tensors, str(path))


def _oft(rows: int, size: int, rescale: bool = True) -> dict[str, tuple[int, ...]]:
    return {"oft_blocks": (rows // size, size, size), **({"rescale": (rows, 1)} if rescale else {})}


def _glora(out: int, inp: int, rank: int) -> dict[str, tuple[int, ...]]:
    # GLoRAModule on a Linear: a2 in -> rank, a1 rank -> in, b2 in -> rank, b1 rank -> out (nn.Linear weights)
    return {
        "a1.weight": (inp, rank),
        "a2.weight": (rank, inp),
        "b1.weight": (out, rank),
        "b2.weight": (rank, inp),
    }


def test_flux_diag_oft_file(tmp_path):
    """One block size (16, from oft_blocks), rescale held: dbspec's fused Diag-OFT over the file's layers."""
    file = tmp_path / "prev.safetensors"
    _file(file, {QKV: _oft(3 * W, 16), PROJ: _oft(W, 16), LINEAR1: _oft(7 * W, 16)}, {})
    outcome = _flux(tmp_path, "--network_args algo=lokr")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "dim_from_weights") == "mapped" and fate(outcome, "network_dim") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_rescaled, a.oft_constraint) == ("diag-oft", 16, True, 0.0)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "linear1"] and not a.blocks
    assert a.init_weights == str(file) and a.init_partial
    assert "transformer_blocks.0.attn.to_out.0" in a.denoiser_targets
    assert "single_transformer_blocks.0.proj_mlp" in a.denoiser_targets
    # no rescale anywhere: rescaled off
    _file(file, {QKV: _oft(3 * W, 16, False), PROJ: _oft(W, 16, False)}, {})
    a = plan_of(_flux(tmp_path), tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_rescaled) == ("diag-oft", 16, False)


def test_flux_diag_oft_file_at_its_block_sizes(tmp_path):
    """Modules at a block size or rescale of their own (make_module_from_state_dict builds each at its
    blocks' size, rescaled where it holds a `rescale`): [[adapter.blocks]] over every diffusers part of
    their modules, the adapter at the size and rescale most modules share."""
    file = tmp_path / "prev.safetensors"
    txt = "lora_unet_double_blocks_0_txt_attn_qkv"
    modules = {QKV: _oft(3 * W, 16), txt: _oft(3 * W, 16), PROJ: _oft(W, 8), LINEAR1: _oft(7 * W, 32, False)}
    _file(file, modules, {})
    outcome = _flux(tmp_path, "--network_args algo=lokr")
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_rescaled, a.oft_constraint) == ("diag-oft", 16, True, 0.0)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"] and a.init_partial
    proj, linear1 = sorted(a.blocks, key=lambda b: b.rank)
    assert (proj.rank, proj.rescaled) == (8, "adapter")  # rescaled like the adapter
    assert re.search(proj.pattern, "transformer_blocks.0.attn.to_out.0")
    assert not re.search(proj.pattern, "transformer_blocks.0.attn.to_add_out")
    assert (linear1.rank, linear1.rescaled, linear1.alpha) == (32, "off", 0.0)
    for part in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"):
        assert re.search(linear1.pattern, f"single_transformer_blocks.0.{part}")
    assert not re.search(linear1.pattern, "single_transformer_blocks.0.proj_out")
    assert not re.search(linear1.pattern, "transformer_blocks.0.attn.to_q")
    # SD3's fused q/k/v of one joint block at its own size
    w, qkv = 2432, "lora_unet_joint_blocks_{}_x_block_attn_qkv"
    _file(
        file,
        {qkv.format(0): _oft(3 * w, 16), qkv.format(1): _oft(3 * w, 16), qkv.format(2): _oft(3 * w, 8)},
        {},
    )
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    (block,) = a.blocks
    assert (a.oft_block_size, block.rank) == (16, 8) and len(a.fused) == 1
    assert re.search(block.pattern, "transformer_blocks.2.attn.to_v")
    assert not re.search(block.pattern, "transformer_blocks.1.attn.to_v")


def test_flux_diag_oft_file_constraints(tmp_path):
    """The file's alpha is DiagOFTModule's constraint (make_module_from_state_dict: constraint = float(alpha);
    was DBS403): the adapter's the one most modules hold, a module at its own a block's."""
    file = tmp_path / "prev.safetensors"
    modules = {QKV: _oft(3 * W, 16), PROJ: _oft(W, 16), LINEAR1: _oft(7 * W, 16)}
    _file(file, modules, {QKV: 1e-3, LINEAR1: 1e-3, PROJ: 0.0})
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.oft_constraint == np.float32(1e-3) and a.oft_block_size == 16
    (block,) = a.blocks
    assert (block.rank, block.alpha) == (16, 0.0)  # the 0 constraint: a block's own
    assert re.search(block.pattern, "transformer_blocks.0.attn.to_out.0")
    assert not re.search(block.pattern, "transformer_blocks.0.attn.to_q")


def test_flux_diag_oft_file_refusals(tmp_path):
    file = tmp_path / "prev.safetensors"
    # blocks of 7 rows split linear1's 21504 rows across its 3072-row parts
    _file(file, {LINEAR1: _oft(7 * W, 7)}, {})
    outcome = _flux(tmp_path, allow=True)
    assert "DBS403" in codes(outcome) and "span" in messages(outcome, "DBS403")
    # the final layer without every single block's linear2
    _file(file, {QKV: _oft(3 * W, 16), "lora_unet_final_layer_linear": _oft(64, 8)}, {})
    outcome = _flux(tmp_path, allow=True)
    assert "DBS403" in codes(outcome) and "final_layer" in messages(outcome, "DBS403")
    # no alpha: make_module_from_state_dict's float(None) raises
    _file(file, {QKV: _oft(3 * W, 16)}, {QKV: None})
    assert "DBS402" in codes(_flux(tmp_path, allow=True))
    # blocks wider than they are many: DiagOFTModule rebuilt the other way round, its copy_ raises
    _file(file, {PROJ: {"oft_blocks": (16, 192, 192)}}, {})
    assert "DBS402" in codes(_flux(tmp_path, allow=True))
    # a BOFT module beside Diag-OFT ones: one kind per file
    _file(file, {QKV: _oft(3 * W, 16), PROJ: _boft(W, 12)}, {})
    outcome = _flux(tmp_path, allow=True)
    assert "DBS403" in codes(outcome) and "beside" in messages(outcome, "DBS403")


def _boft(rows: int, hint: int, rescale: bool = True) -> dict[str, tuple[int, ...]]:
    """ButterflyOFTModule's tensors on a layer of `rows` built at lora_dim `hint` (algo=boft's network_dim):
    power2factorization's (block_size, block_num), popcount(block_num - 1) + 1 stages."""
    size, count = power2_factorization(rows, hint)
    assert count, (rows, hint)
    stages = bin(count - 1).count("1") + 1
    return {"oft_blocks": (stages, count, size, size), **({"rescale": (rows, 1)} if rescale else {})}


def test_flux_boft_file_is_one_fused_boft(tmp_path):
    """A file algo=boft saved at network_dim 64 (each module its own block size: 9216 rows as 256 x 36,
    3072 as 64 x 48, 21504 as 512 x 42): create_network_from_weights rebuilds each at lora_dim = its block
    size, constraint = alpha; dbspec's fused BOFT at the largest block size (48), which gives every module its
    file split (was DBS403)."""
    file = tmp_path / "prev.safetensors"
    widths = {QKV: 3 * W, PROJ: W, LINEAR1: 7 * W}
    modules = {name: _boft(rows, 64) for name, rows in widths.items()}
    _file(file, modules, dict.fromkeys(modules, 1e-3))
    outcome = _flux(tmp_path, "--network_args algo=lokr --scale_weight_norms 1.5")
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    assert fate(outcome, "dim_from_weights") == "mapped" and fate(outcome, "network_dim") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    sizes = {name: m["oft_blocks"][2] for name, m in modules.items()}
    assert (a.kind, a.oft_block_size, a.oft_rescaled, a.bypass) == ("boft", max(sizes.values()), True, False)
    assert a.oft_constraint == np.float32(1e-3) and not a.blocks
    for name, rows in widths.items():  # the runtime's split of each (fused) layer is the file's
        stages, count, size, _ = modules[name]["oft_blocks"]
        assert power2_factorization(rows, a.oft_block_size) == (size, count)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "linear1"]
    assert a.init_weights == str(file) and a.init_partial
    assert "single_transformer_blocks.0.proj_mlp" in a.denoiser_targets
    assert a.max_norm == 1.5  # ButterflyOFTModule.apply_max_norm: the fused module's blocks
    # no rescale anywhere: rescaled off
    _file(file, {name: _boft(rows, 64, False) for name, rows in widths.items()}, {})
    a = plan_of(_flux(tmp_path), tmp_path).adapter
    assert (a.kind, a.oft_rescaled, a.oft_constraint) == ("boft", False, 0.0)


def test_sd3_boft_file(tmp_path):
    w, qkv = 2432, "lora_unet_joint_blocks_{}_x_block_attn_qkv"  # 7296 rows = 64 x 114
    _file(tmp_path / "prev.safetensors", {qkv.format(i): _boft(3 * w, 128) for i in range(2)}, {})
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, len(a.fused), a.oft_block_size) == ("boft", 1, power2_factorization(3 * w, 128)[0])


def test_flux_boft_file_refusals(tmp_path):
    """What one fused BOFT cannot hold (DBS403, naming the module); what LyCORIS fails on (DBS402)."""
    file = tmp_path / "prev.safetensors"
    # modules at other constraints: a fused BOFT takes no [[adapter.blocks]]
    _file(file, {QKV: _boft(3 * W, 64), PROJ: _boft(W, 64)}, {QKV: 1e-3, PROJ: 0.0})
    outcome = _flux(tmp_path, allow=True)
    assert "DBS403" in codes(outcome) and "constraints or rescales" in messages(outcome, "DBS403")
    # 3072 rows as 256 x 12 beside blocks of 36: the hint 36 splits 3072 as 128 x 24
    assert power2_factorization(W, 36) != power2_factorization(W, 12)
    _file(file, {QKV: _boft(3 * W, 36), PROJ: _boft(W, 12)}, {})
    outcome = _flux(tmp_path, allow=True)
    assert "DBS403" in codes(outcome) and PROJ in messages(outcome, "DBS403")
    # the final layer without every single block's linear2
    _file(file, {QKV: _boft(3 * W, 64), "lora_unet_final_layer_linear": _boft(64, 8)}, {})
    outcome = _flux(tmp_path, allow=True)
    assert "DBS403" in codes(outcome) and "final_layer" in messages(outcome, "DBS403")
    # 4-D blocks whose split LyCORIS's rebuild does not give (its copy_ raises)
    _file(file, {PROJ: {"oft_blocks": (9, 256, 12, 10)}}, {})
    assert "DBS402" in codes(_flux(tmp_path, allow=True))


def test_flux_glora_file_at_its_ranks(tmp_path):
    """GLoRA at the rank and alpha most modules share; linear1 at its own: a block over all its parts; the
    final layer beside a rank-0 block for the single blocks' linear2 the file lacks."""
    file = tmp_path / "prev.safetensors"
    final = "lora_unet_final_layer_linear"
    modules = {QKV: _glora(3 * W, W, 4), PROJ: _glora(W, W, 4), LINEAR1: _glora(7 * W, W, 8)}
    _file(file, {**modules, final: _glora(64, W, 4)}, {QKV: 2.0, PROJ: 2.0, LINEAR1: 0.0, final: 2.0})
    outcome = _flux(tmp_path, "--network_args algo=diag-oft")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("glora", 4, 2.0) and a.init_partial
    assert [f.name for f in a.fused] == ["img_attn_qkv", "linear1"]
    zero, own = a.blocks
    assert zero.rank == 0 and re.search(zero.pattern, "single_transformer_blocks.5.proj_out")
    assert not re.search(zero.pattern, "proj_out")
    assert (own.rank, own.alpha) == (8, 8.0)  # alpha 0: GLoRAModule's alpha is the rank
    for part in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"):
        assert re.search(own.pattern, f"single_transformer_blocks.0.{part}")
    assert not re.search(own.pattern, "transformer_blocks.0.attn.to_q")


def test_glora_file_refusals_and_sd3(tmp_path):
    file = tmp_path / "prev.safetensors"
    # a Tucker core: GLoRAModule builds none (AttributeError)
    _file(file, {QKV: {**_glora(3 * W, W, 4), "bm.weight": (4, 4)}}, {QKV: 1.0})
    assert "DBS402" in codes(_flux(tmp_path, allow=True))
    # a CLIP module (text encoders trained): dbspec rebuilds the denoiser's only
    clip = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    _file(file, {QKV: _glora(3 * W, W, 4), clip: _glora(768, 768, 4)}, {QKV: 1.0, clip: 1.0})
    outcome = _flux(tmp_path, allow=True)
    assert "DBS403" in codes(outcome) and clip in messages(outcome, "DBS403")
    # GLoRA beside Diag-OFT modules
    _file(file, {QKV: _glora(3 * W, W, 4), PROJ: _oft(W, 16)}, {QKV: 1.0})
    assert "DBS403" in codes(_flux(tmp_path, allow=True))
    # SD3's fused q/k/v at one rank
    w, qkv = 2432, "lora_unet_joint_blocks_0_x_block_attn_qkv"
    _file(file, {qkv: _glora(3 * w, w, 4)}, {qkv: 2.0})
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("glora", 4, 2.0) and len(a.fused) == 1 and a.init_partial
    # SD3's patch convolution: dbspec rebuilds the Linears only
    _file(file, {"lora_unet_x_embedder_proj": _oft(w, 16)}, {})
    assert "DBS403" in codes(_sd3(tmp_path, allow=True))
