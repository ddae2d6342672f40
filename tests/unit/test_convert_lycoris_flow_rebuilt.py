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
import pytest
from convert_kit import codes, errors, fate, messages, out_path, plan_of
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
    # blocks of 7 rows split linear1's 21504 rows across its 3072-row parts: the parts share them
    # (runtime/fused_oft.py; was DBS403), a block of their own at 7
    _file(file, {LINEAR1: _oft(7 * W, 7)}, {})
    outcome = _flux(tmp_path, allow=True)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.oft_block_size == 7
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
    """What a fused BOFT cannot hold (DBS403, naming the module); what LyCORIS fails on (DBS402)."""
    file = tmp_path / "prev.safetensors"
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
    # SD3's patch convolution alone: no Linear of the denoiser
    _file(file, {"lora_unet_x_embedder_proj": _oft(w, 16)}, {})
    outcome = _sd3(tmp_path, allow=True)
    assert "DBS403" in codes(outcome) and "no Linear" in messages(outcome, "DBS403")


CLIP_Q = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
CLIP_FC1 = "lora_te1_text_model_encoder_layers_1_mlp_fc1"
CLIP_PATHS = ("encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1")
KIND_FILES = {  # kind -> (module tensors on a Linear of (out, in), the modules' own (CLIP fc1's) block)
    "diag-oft": lambda out, inp, own: _oft(out, 8 if own else 16),
    "boft": lambda out, inp, own: _boft(out, 12 if own else 64),  # 9216 rows: 36 x 256, 768: 48 x 16
    "glora": lambda out, inp, own: _glora(out, inp, 8 if own else 4),
}


def test_flux_rebuilt_files_with_clip_modules(tmp_path):
    """CLIP-L modules (lora_te1_*, LyCORIS's first encoder) beside the denoiser's (was DBS403): LyCORIS's
    DiagOFTModule / ButterflyOFTModule / GLoRAModule on those CLIP Linears, dbspec's adapter of that kind on
    them (text_encoder_targets, their full paths), a module at its own block size or rank a
    [[adapter.text_encoder_blocks]] entry naming it alone; --network_train_unet_only drops them (apply_to)."""
    file = tmp_path / "prev.safetensors"
    for kind, tensors in KIND_FILES.items():
        modules = {
            QKV: tensors(3 * W, W, False),
            PROJ: tensors(W, W, False),
            CLIP_Q: tensors(768, 768, False),
            CLIP_FC1: tensors(3072, 768, True),
        }
        _file(file, modules, dict.fromkeys(modules, 2.0 if kind == "glora" else 1e-3))
        outcome = _flux(tmp_path)
        assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), (kind, errors(outcome))
        plan = plan_of(outcome, tmp_path)
        a = plan.adapter
        assert a.kind == kind and plan.train_text_encoder, kind
        assert a.text_encoder_targets == CLIP_PATHS, kind
        (own,) = a.text_encoder_blocks
        assert re.search(own.pattern, "text_encoder.text_model.encoder.layers.1.mlp.fc1"), kind
        assert not re.search(own.pattern, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj")
        assert not a.blocks, kind
        if kind == "glora":
            assert (a.rank, a.alpha, own.rank, own.alpha) == (4, 2.0, 8, 2.0)
        else:  # the block's rank is its block-size hint (fc1's own size), its alpha the constraint
            assert own.rank == modules[CLIP_FC1]["oft_blocks"][-1] != a.oft_block_size, kind
            assert a.oft_block_size == (16 if kind == "diag-oft" else 48), (
                kind
            )  # boft: the hint splitting most
            assert own.alpha == a.oft_constraint == np.float32(1e-3), kind
        unet_only = plan_of(_flux(tmp_path, "--network_train_unet_only"), tmp_path)
        assert not unet_only.train_text_encoder and not unet_only.adapter.text_encoder_blocks, kind
    # text_encoder_lr 0: LyCORIS applies the CLIP modules (the file's weights) and trains none of them,
    # while flux_train_network.py runs CLIP-L under grad: the idle encoder (train.text_encoder_idle)
    outcome = _flux(tmp_path, "--text_encoder_lr 0", allow=True)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.idle_text_encoders == ("text_encoder",) and not plan.train_text_encoder


T5_Q = "lora_te{}_encoder_block_0_layer_0_SelfAttention_q"
T5_WO = "lora_te{}_encoder_block_3_layer_1_DenseReluDense_wo"


def _t5_block(a, path: str):
    """The first text-encoder block (`exclude`'s rank-0 ones among the adapter's blocks first) naming path."""
    return next((b for b in (*a.blocks, *a.text_encoder_blocks) if re.search(b.pattern, path)), None)


@pytest.mark.parametrize("kind", list(KIND_FILES))
def test_flux_rebuilt_file_with_t5_modules(tmp_path, kind):
    """T5-XXL's modules (Flux's lora_te2_, LyCORIS's second encoder; was DBS403) train in LyCORIS's text group
    while T5 encodes every step: train.t5 with the file's kind, started from the file; a module at its own
    values a text-encoder block over its text_encoder_2 path; T5's Linears the file lacks at rank 0 (GLoRA)
    or `exclude`d within T5 (Diag-OFT, BOFT); no CLIP module: CLIP-L frozen. Cached text-encoder outputs
    (T5 never encodes: the file's weights stay) DBS403; text_encoder_lr 0 train.t5_idle; a T5 module off its
    attention / MLP Linears DBS403; --network_train_unet_only drops them."""
    tensors, file = KIND_FILES[kind], tmp_path / "prev.safetensors"
    q, wo = T5_Q.format(2), T5_WO.format(2)
    modules = {QKV: tensors(3 * W, W, False), q: tensors(4096, 4096, False), wo: tensors(4096, 10240, True)}
    _file(file, modules, dict.fromkeys(modules, 2.0 if kind == "glora" else 1e-3))
    outcome = _flux(tmp_path, "--text_encoder_lr 3e-5")
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    trained = {c.name for c in plan.precision.components if c.trainable == "lora"}
    assert a.kind == kind and trained == {"unet", "text_encoder_2"}
    assert a.t5_targets == ("q", "k", "v", "o", "wi_0", "wi_1", "wo") and a.init_weights == str(file)
    assert plan.optimizer.text_encoder_lr == 3e-5
    t5 = "text_encoder_2.encoder.block.{}.layer.{}"
    assert _t5_block(a, t5.format(0, "0.SelfAttention.q")) is None  # the adapter's own values
    own = _t5_block(a, t5.format(3, "1.DenseReluDense.wo"))
    for left in (t5.format(0, "0.SelfAttention.k"), t5.format(3, "1.DenseReluDense.wi_0")):
        assert _t5_block(a, left).rank == 0, left
    if kind == "glora":
        assert (a.rank, a.alpha, own.rank, own.alpha) == (4, 2.0, 8, 2.0)
    else:  # the block size, and `exclude` kept to T5: no denoiser layer named like T5's loses its adapter
        assert own.rank == modules[wo]["oft_blocks"][-1] != a.oft_block_size
        assert not any(re.search(b.pattern, "transformer_blocks.0.ff.net.2") for b in a.blocks if not b.rank)
    assert not re.search(own.pattern, t5.format(0, "0.SelfAttention.q"))
    outcome = _flux(tmp_path, "--cache_text_encoder_outputs", allow=True)
    assert "T5-XXL's" in messages(outcome, "DBS403") and q in messages(outcome, "DBS403")
    idle = plan_of(_flux(tmp_path, "--text_encoder_lr 0"), tmp_path)
    assert idle.idle_text_encoders == ("text_encoder_2",) and idle.adapter.init_weights == str(file)
    unet_only = plan_of(_flux(tmp_path, "--network_train_unet_only"), tmp_path)
    assert not unet_only.train_text_encoder and not unet_only.adapter.text_encoder_blocks
    bias = "lora_te2_encoder_block_0_layer_0_SelfAttention_relative_attention_bias"
    _file(file, {**modules, bias: tensors(32, 64, False)}, {})
    assert "no T5-XXL attention" in messages(_flux(tmp_path, allow=True), "DBS403")


@pytest.mark.parametrize("kind", ["diag-oft", "glora"])
def test_sd3_rebuilt_file_with_t5_modules(tmp_path, kind):
    """SD3's T5-XXL modules (lora_te3_, LyCORIS's third encoder after CLIP-L and CLIP-G; was DBS403): train.t5
    on text_encoder_3, started from the file, CLIP-L's module beside them training CLIP-L alone."""
    w, qkv = 2432, "lora_unet_joint_blocks_0_x_block_attn_qkv"
    tensors = KIND_FILES[kind]
    modules = {
        qkv: tensors(3 * w, w, False),
        CLIP_Q: tensors(768, 768, False),
        T5_Q.format(3): tensors(4096, 4096, False),
        T5_WO.format(3): tensors(4096, 10240, True),
    }
    _file(tmp_path / "prev.safetensors", modules, dict.fromkeys(modules, 1.0))
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    trained = {c.name for c in plan.precision.components if c.trainable == "lora"}
    assert a.kind == kind and trained == {"unet", "text_encoder", "text_encoder_3"}
    assert a.text_encoder_targets == ("encoder.layers.0.self_attn.q_proj",) and a.t5_targets
    t5 = "text_encoder_3.encoder.block.{}.layer.{}"
    assert _t5_block(a, t5.format(3, "1.DenseReluDense.wo")).rank == 8  # its own
    assert _t5_block(a, t5.format(0, "0.SelfAttention.q")) is None
    assert _t5_block(a, t5.format(0, "0.SelfAttention.v")).rank == 0


def test_sd3_rebuilt_file_with_clip_g_modules(tmp_path):
    """SD3's CLIP-G modules (lora_te2_*) on other layers than CLIP-L's: their own text_encoder_2_targets."""
    w, qkv = 2432, "lora_unet_joint_blocks_0_x_block_attn_qkv"
    clip_g = "lora_te2_text_model_encoder_layers_20_self_attn_v_proj"
    _file(
        tmp_path / "prev.safetensors",
        {qkv: _oft(3 * w, 16), CLIP_Q: _oft(768, 16), clip_g: _oft(1280, 16)},
        {},
    )
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.text_encoder_targets == ("encoder.layers.0.self_attn.q_proj",)
    assert a.text_encoder_2_targets == ("encoder.layers.20.self_attn.v_proj",)


def test_sd3_rebuilt_file_with_the_patch_convolution(tmp_path):
    """SD3's patch convolution (`lora_unet_x_embedder_proj`, diffusers' pos_embed.proj, a 2x2 stride-2
    Conv2d; was DBS403): LyCORIS's module on it from the file's keys -> conv_targets; Diag-OFT / BOFT at a
    block size of its own a block naming it, GLoRA at its rank and alpha as conv_rank / conv_alpha."""
    w, qkv, patch = 2432, "lora_unet_joint_blocks_0_x_block_attn_qkv", "lora_unet_x_embedder_proj"
    file = tmp_path / "prev.safetensors"
    for kind, oft, hints in (("diag-oft", _oft, (16, 8)), ("boft", _boft, (128, 38))):
        _file(file, {qkv: oft(3 * w, hints[0]), patch: {**oft(w, hints[1]), "rescale": (w, 1, 1, 1)}}, {})
        outcome = _sd3(tmp_path)
        assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), (kind, errors(outcome))
        a = plan_of(outcome, tmp_path).adapter
        assert a.kind == kind and a.conv_targets == ("pos_embed.proj",), kind
        (block,) = a.blocks
        assert re.search(block.pattern, "pos_embed.proj") and not re.search(block.pattern, "to_q"), kind
        size = oft(w, hints[1])["oft_blocks"][-1]
        assert (block.rank, block.conv_rank) == (size, size), kind
    # GLoRAModule on the convolution: a1 / a2 / b1 1x1, b2 the 2x2 kernel
    conv = {"a1.weight": (w, 6, 1, 1), "a2.weight": (6, 16, 1, 1), "b1.weight": (w, 6, 1, 1)}
    _file(
        file, {qkv: _glora(3 * w, w, 4), patch: {**conv, "b2.weight": (6, 16, 2, 2)}}, {qkv: 2.0, patch: 3.0}
    )
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha, a.conv_rank, a.conv_alpha) == (4, 2.0, 6, 3.0)
    assert a.conv_targets == ("pos_embed.proj",) and not a.blocks


def test_flux_boft_file_modules_at_their_own_values_are_blocks(tmp_path):
    """BOFT modules at another constraint or rescale, or whose split the adapter's hint does not give (was
    DBS403): [[adapter.blocks]] at their own block size, constraint and rescale over every diffusers part of
    their (fused) module; the adapter at the hint giving most modules their split."""
    file = tmp_path / "prev.safetensors"
    txt = "lora_unet_double_blocks_0_txt_attn_qkv"
    # saved at network_dim 64 (qkv 36 x 256, linear1 42 x 512) beside 3072 rows as 12 x 256, which the hint
    # 42 (the file's block size giving most modules theirs) splits as 24 x 128
    assert power2_factorization(W, 42) != power2_factorization(W, 12)
    modules = {QKV: _boft(3 * W, 64), txt: _boft(3 * W, 64), PROJ: _boft(W, 12), LINEAR1: _boft(7 * W, 64)}
    _file(file, modules, {QKV: 1e-3, txt: 1e-3, PROJ: 1e-3, LINEAR1: 0.0})
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_constraint) == ("boft", 42, np.float32(1e-3))
    proj, linear1 = sorted(a.blocks, key=lambda b: b.rank)
    assert (proj.rank, proj.alpha) == (modules[PROJ]["oft_blocks"][2], np.float32(1e-3))
    assert re.search(proj.pattern, "transformer_blocks.0.attn.to_out.0")
    assert (linear1.rank, linear1.alpha) == (modules[LINEAR1]["oft_blocks"][2], 0.0)
    for part in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"):
        assert re.search(linear1.pattern, f"single_transformer_blocks.0.{part}")
    assert not re.search(linear1.pattern, "transformer_blocks.0.attn.to_q")
    for name, rows in ((QKV, 3 * W), (LINEAR1, 7 * W)):  # the hint gives the other modules their splits
        assert power2_factorization(rows, 42)[1] == modules[name]["oft_blocks"][1]


def test_flux_negative_oft_alpha_constrains_nothing(tmp_path):
    """A negative alpha (was DBS403): LyCORIS's `if constraint > 0` leaves the module unconstrained, as 0."""
    file = tmp_path / "prev.safetensors"
    for oft in (_oft, _boft):
        modules = {QKV: oft(3 * W, 64 if oft is _boft else 16), PROJ: oft(W, 64 if oft is _boft else 16)}
        _file(file, modules, {QKV: -0.5, PROJ: 0.0})
        outcome = _flux(tmp_path)
        assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path).adapter
        assert a.oft_constraint == 0.0 and not a.blocks


def test_diag_oft_blocks_spanning_fused_parts_convert(tmp_path):
    """A Diag-OFT module whose blocks cross the bounds of its fused Linear's parts (LyCORIS rotates them
    together; was DBS403): its parts share its blocks (runtime/fused_oft.py), on Flux and SD3; blocks
    within the parts convert as before."""
    file = tmp_path / "prev.safetensors"
    w, qkv = 2432, "lora_unet_joint_blocks_0_x_block_attn_qkv"
    assert (3 * w) % 12 == 0 and w % 12  # 608 blocks of 12 rows: one spans to_q's and to_k's rows
    _file(file, {qkv: _oft(3 * w, 12)}, {})
    outcome = _sd3(tmp_path, allow=True)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.oft_block_size == 12
    _file(file, {qkv: _oft(3 * w, 16)}, {})
    assert not {"DBS402", "DBS403"} & codes(_sd3(tmp_path))
    # FLUX.1's qkv at blocks of 24 (3072 = 128 x 24): within the parts, whatever linear1 would do
    _file(file, {QKV: _oft(3 * W, 24)}, {})
    assert not {"DBS402", "DBS403"} & codes(_flux(tmp_path))


@pytest.mark.parametrize("kind", ["diag-oft", "boft"])
def test_flux_final_layer_without_every_linear2_excludes_the_rest(tmp_path, kind):
    """Flux's final layer (kohya's final_layer.linear, diffusers' top-level `proj_out`) with single block 5's
    linear2 alone: the target `proj_out` takes every single block's proj_out along, so those the file lacks
    are `exclude`d (rank-0 blocks first: no rotation, as LyCORIS builds none there); checked against
    lycoris-lora 4.1.3 in tests/runtime/test_lycoris_flow_rebuilt_file.py."""
    make, size = (_oft, 16) if kind == "diag-oft" else (_boft, 64)
    file = tmp_path / "prev.safetensors"
    final, linear2 = "lora_unet_final_layer_linear", "lora_unet_single_blocks_5_linear2"
    _file(file, {QKV: make(3 * W, size), final: make(64, 8), linear2: make(W, size)}, {})
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == kind and {"proj_out", "single_transformer_blocks.5.proj_out"} <= set(a.denoiser_targets)
    zero = a.blocks[0]
    assert zero.rank == 0 and not re.search(zero.pattern, "proj_out")
    assert not re.search(zero.pattern, "single_transformer_blocks.5.proj_out")
    for i in (0, 4, 6, 37):
        assert re.search(zero.pattern, f"single_transformer_blocks.{i}.proj_out"), i
    assert "exclude = [" in out_path(tmp_path).read_text(encoding="utf-8")
    # the final layer at a block size of its own (8 where most are 16 / 64): its block after the exclusion
    own = next(b for b in a.blocks[1:] if re.search(b.pattern, "proj_out"))
    assert own.rank == 8 and not re.search(own.pattern, "single_transformer_blocks.5.proj_out")
