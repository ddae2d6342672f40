"""lycoris.kohya --dim_from_weights on flux_train_network.py / sd3_train_network.py: LyCORIS 4.1.3's
create_network_from_weights (lycoris/kohya.py) matches the file's module names against every module of kohya's
model (unet.named_modules(), not its preset lists: the embedders and Flux's final layer build too) and builds
each from the file's keys, the network_args unread. A LoCon file (lora_down / lora_up / alpha under kohya's
names, what algo=lora / locon saves) is one LoConModule per fused Linear at the file's rank and alpha:
dbspec's fused LoRA with the file's modules as [[adapter.blocks]], started from the file. A LoKr / LoHa file
(lokr_w1 / hada_w1_a keys: LokrModule / LohaModule) is dbspec's fused LoKr / LoHa, modules at a rank,
alpha or LoKr split of their own as [[adapter.blocks]].
CLIP modules are lora_flux's / lora_sd3's; T5-XXL modules (Flux's lora_te2 in LyCORIS's numbering) are
train.t5."""

from __future__ import annotations

import re

import numpy as np
from convert_kit import codes, component_file, errors, fate, images, kohya, messages, out_path, plan_of
from safetensors.numpy import save_file

FLUX = "black-forest-labs/FLUX.1-dev"
FLUX_BASE = (
    f"accelerate launch --mixed_precision bf16 flux_train_network.py --pretrained_model_name_or_path {FLUX} "
    "--clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors --ae ae.safetensors --train_data_dir x "
    "--resolution 512 --cache_latents_to_disk --save_model_as safetensors --sdpa --seed 42 "
    "--mixed_precision bf16 --save_precision bf16 --network_module lycoris.kohya --network_dim 8 "
    "--network_alpha 4 --optimizer_type adamw --learning_rate 1e-4 --max_train_steps 100 "
    "--timestep_sampling shift --discrete_flow_shift 3.1582 --model_prediction_type raw --guidance_scale 1.0 "
    "--network_weights prev.safetensors --dim_from_weights"
)
SD35 = "stabilityai/stable-diffusion-3.5-large"


def _flux(tmp_path, extra: str = "", *, allow: bool = False):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    return kohya(tmp_path, allow=allow, command=f"{FLUX_BASE} {extra}")


def _sd3(tmp_path, extra: str = "", *, allow: bool = False):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    return kohya(
        tmp_path,
        allow=allow,
        command=f"accelerate launch sd3_train_network.py --pretrained_model_name_or_path {SD35} "
        "--clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors "
        "--train_data_dir x --resolution 512 --save_model_as safetensors --sdpa --seed 42 "
        "--network_module lycoris.kohya --network_dim 8 --network_alpha 4 --learning_rate 1e-4 "
        f"--max_train_steps 100 --network_weights prev.safetensors --dim_from_weights {extra}",
    )


def _locon_file(path, layers: dict[str, tuple[int, int, int, float]]):
    """A LoCon file as LyCORIS saves algo=locon: name -> (out, in, rank, alpha), zero tensors."""
    tensors = {}
    for name, (out, inp, rank, alpha) in layers.items():
        tensors[f"{name}.lora_down.weight"] = np.zeros((rank, inp), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((out, rank), np.float16)
        tensors[f"{name}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path))


W = 3072  # FLUX.1's width
FLUX_LAYERS = {
    "lora_unet_double_blocks_0_img_attn_qkv": (3 * W, W, 16, 8.0),
    "lora_unet_double_blocks_1_txt_mlp_2": (W, 4 * W, 4, 4.0),
    "lora_unet_single_blocks_0_linear1": (7 * W, W, 16, 8.0),
    "lora_unet_final_layer_linear": (64, W, 4, 2.0),  # outside LyCORIS's presets: built from a file
    "lora_unet_img_in": (W, 64, 4, 2.0),
}


def _rank(adapter, path: str) -> tuple[int, float]:
    block = next(b for b in adapter.blocks if re.search(b.pattern, path))
    return block.rank, block.alpha


def test_flux_locon_file_builds_its_modules_at_their_ranks(tmp_path):
    """The file's modules at their ranks (the final layer and img_in too: LyCORIS walks every module of
    kohya's Flux), none elsewhere; network_args unread (algo=lokr builds nothing here: the keys decide)."""
    _locon_file(tmp_path / "prev.safetensors", FLUX_LAYERS)
    outcome = _flux(tmp_path, "--network_args algo=lokr preset=attn-only --network_dropout 0.1")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "dim_from_weights") == "mapped" and fate(outcome, "network_dim") == "inert"
    assert fate(outcome, "network_args") == fate(outcome, "network_dropout") == "inert"
    assert "reads none of them" in messages(outcome, "DBS405")
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lora" and (a.rank, a.alpha) == (16, 8.0) and a.down_dropout == 0
    assert [f.name for f in a.fused] == ["img_attn_qkv", "linear1"]  # the file's, one shared down each
    assert a.init_weights == str(tmp_path / "prev.safetensors") and a.init_partial
    assert {"proj_out", "x_embedder"} <= set(a.denoiser_targets)
    assert _rank(a, "transformer_blocks.0.attn.to_k") == (16, 8.0)  # the fused qkv, one shared down
    assert _rank(a, "transformer_blocks.1.ff_context.net.2") == (4, 4.0)
    assert _rank(a, "single_transformer_blocks.0.proj_mlp") == (16, 8.0)
    assert _rank(a, "proj_out") == (4, 2.0) and _rank(a, "x_embedder") == (4, 2.0)
    assert _rank(a, "transformer_blocks.1.attn.to_q") == (0, 1.0)  # not in the file: no module
    assert _rank(a, "single_transformer_blocks.0.proj_out") == (0, 1.0)
    assert _rank(a, "norm_out.linear") == (0, 1.0)


def _factor_file(path, modules: dict[str, dict[str, tuple[int, ...]]], alpha: float | None = 1.0):
    tensors = {}
    for name, shapes in modules.items():
        tensors |= {f"{name}.{k}": np.zeros(s, np.float16) for k, s in shapes.items()}
        if alpha is not None:
            tensors[f"{name}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path))


def test_flux_lokr_file_builds_lycoris_lokr_modules(tmp_path):
    """create_network_from_weights builds a LokrModule from lokr_w1 / lokr_w2 keys, its factor read back
    from the shapes (4 here: w1 4 x 4 of a 3072 x 3072 Linear), both factors full (full_matrix, scale 1):
    dbspec's fused LoKr over the file's layers, started from it (runtime test:
    test_lycoris_flow_factor_file)."""
    full = {"lokr_w1": (4, 4), "lokr_w2": (768, 768)}
    qkv = {"lokr_w1": (4, 4), "lokr_w2": (2304, 768)}  # 9216 x 3072 by factor 4
    _factor_file(
        tmp_path / "prev.safetensors",
        {"lora_unet_double_blocks_0_img_attn_proj": full, "lora_unet_double_blocks_0_img_attn_qkv": qkv},
    )
    outcome = _flux(tmp_path, "--network_args algo=loha")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "dim_from_weights") == "mapped" and fate(outcome, "network_dim") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.factor, a.full_matrix) == ("lokr", 4, True)
    assert set(a.denoiser_targets) == {
        "transformer_blocks.0.attn.to_out.0",
        *(f"transformer_blocks.0.attn.to_{p}" for p in "qkv"),
    }
    assert [f.name for f in a.fused] == ["img_attn_qkv"] and a.init_partial


def test_flux_loha_file_at_one_rank_and_the_refusals(tmp_path):
    """LohaModule per module at hada_w1_b's rows and the file's alpha (a module at a rank of its own: a
    block); Flux's final layer (proj_out, a suffix of every single block's), dora_scale: DBS403; no alpha:
    LyCORIS's TypeError."""

    def loha(out, inp, rank):
        return {
            "hada_w1_a": (out, rank),
            "hada_w1_b": (rank, inp),
            "hada_w2_a": (out, rank),
            "hada_w2_b": (rank, inp),
        }

    modules = {"lora_unet_single_blocks_0_linear1": loha(7 * W, W, 8), "lora_unet_img_in": loha(W, 64, 8)}
    _factor_file(tmp_path / "prev.safetensors", modules, alpha=4.0)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("loha", 8, 4.0) and "x_embedder" in a.denoiser_targets
    # a module at a rank of its own: a block over its diffusers Linear (the rest at the file's most common)
    _factor_file(
        tmp_path / "prev.safetensors",
        {**modules, "lora_unet_double_blocks_0_img_attn_proj": loha(W, W, 4)},
        4.0,
    )
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha) == (8, 4.0) and _rank(a, "transformer_blocks.0.attn.to_out.0") == (4, 4.0)
    assert not any(re.search(b.pattern, "single_transformer_blocks.0.proj_mlp") for b in a.blocks)
    # T5-XXL's modules (LyCORIS's lora_te2_ on Flux) train while T5 encodes every step: train.t5, LoHa on
    # T5 at the file's rank (one at its own: a text-encoder block), the Linears the file lacks at rank 0
    t5 = {
        "lora_te2_encoder_block_0_layer_0_SelfAttention_q": loha(4096, 4096, 8),
        "lora_te2_encoder_block_3_layer_1_DenseReluDense_wo": loha(4096, 10240, 2),
    }
    _factor_file(tmp_path / "prev.safetensors", {**modules, **t5}, alpha=4.0)
    outcome = _flux(tmp_path, "--text_encoder_lr 2e-5")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert "text_encoder_2" in {c.name for c in plan.precision.components if c.trainable == "lora"}
    assert (a.kind, a.rank, a.alpha) == ("loha", 8, 4.0) and plan.optimizer.text_encoder_lr == 2e-5
    t5_path = "text_encoder_2.encoder.block.{}.layer.{}"

    def _te(path):
        block = next((b for b in a.text_encoder_blocks if re.search(b.pattern, path)), None)
        return None if block is None else (block.rank, block.alpha)

    assert _te(t5_path.format(0, "0.SelfAttention.q")) is None  # the adapter's rank 8
    assert _te(t5_path.format(3, "1.DenseReluDense.wo")) == (2, 4.0)
    assert _te(t5_path.format(0, "0.SelfAttention.k")) == (0, 1.0)
    assert _te(t5_path.format(23, "1.DenseReluDense.wi_0")) == (0, 1.0)
    outcome = _flux(tmp_path, "--cache_text_encoder_outputs", allow=True)  # T5 never encodes: the file's stay
    assert "T5-XXL's" in messages(outcome, "DBS403"), errors(outcome)
    # text_encoder_lr 0: T5 encodes under grad through the file's modules, never trained, their gradients in
    # the clip: train.t5_idle, loaded from the file (convert/kohya/idle_text.py; was DBS403)
    outcome = _flux(tmp_path, "--text_encoder_lr 0")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    idle = plan_of(outcome, tmp_path)
    assert idle.idle_text_encoders == ("text_encoder_2",) and idle.adapter.kind == "loha"
    assert idle.adapter.init_weights.endswith("prev.safetensors") and idle.adapter.t5_targets
    bad = {"lora_te2_encoder_block_0_layer_0_SelfAttention_relative_attention_bias": loha(32, 64, 8)}
    _factor_file(tmp_path / "prev.safetensors", {**modules, **bad}, alpha=4.0)
    assert "no T5-XXL attention" in messages(_flux(tmp_path, allow=True), "DBS403")
    # a CLIP module at a rank of its own: an [[adapter.text_encoder_blocks]] entry over its path
    clip = {"lora_te1_text_model_encoder_layers_0_mlp_fc1": loha(3072, 768, 4)}
    _factor_file(tmp_path / "prev.safetensors", {**modules, **clip}, alpha=4.0)
    outcome = _flux(tmp_path, "--text_encoder_lr 5e-5")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    (block,) = plan.adapter.text_encoder_blocks
    assert (block.rank, block.alpha) == (4, 4.0) and plan.train_text_encoder
    assert re.search(block.pattern, "text_encoder.text_model.encoder.layers.0.mlp.fc1")
    assert not re.search(block.pattern, "text_encoder.text_model.encoder.layers.0.mlp.fc2")
    _factor_file(tmp_path / "prev.safetensors", modules, alpha=None)
    assert "float(None)" in messages(_flux(tmp_path, allow=True), "DBS402")
    # Flux's final layer: the target proj_out, and a first rank-0 block for the single blocks' proj_out
    # (kohya's linear2) the file lacks: here all but block 5's
    final = {
        "lora_unet_final_layer_linear": loha(64, W, 8),
        "lora_unet_single_blocks_5_linear2": loha(W, 5 * W, 8),
    }
    _factor_file(tmp_path / "prev.safetensors", {**modules, **final}, alpha=4.0)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert {"proj_out", "single_transformer_blocks.5.proj_out"} <= set(a.denoiser_targets)
    assert (a.rank, a.alpha) == (8, 4.0) and not any(re.search(b.pattern, "proj_out") for b in a.blocks)
    assert not any(re.search(b.pattern, "single_transformer_blocks.5.proj_out") for b in a.blocks)
    assert _rank(a, "single_transformer_blocks.4.proj_out") == (0, 1.0)
    assert _rank(a, "single_transformer_blocks.37.proj_out") == (0, 1.0)


def _loha(out: int, inp: int, rank: int) -> dict[str, tuple[int, int]]:
    return {
        "hada_w1_a": (out, rank),
        "hada_w1_b": (rank, inp),
        "hada_w2_a": (out, rank),
        "hada_w2_b": (rank, inp),
    }


def test_flux_factor_file_with_clip_modules(tmp_path):
    """A LoHa file's CLIP-L modules (lora_te1_*, LyCORIS's first encoder): text_encoder_targets, their
    paths (a suffix of both CLIP layouts), at the file's rank; CLIP-L trains (runtime test:
    test_lycoris_flow_factor_file)."""
    modules = {"lora_unet_single_blocks_0_linear1": _loha(7 * W, W, 8)}
    for i in range(12):
        for part in ("self_attn_q_proj", "self_attn_v_proj"):
            modules[f"lora_te1_text_model_encoder_layers_{i}_{part}"] = _loha(768, 768, 8)
    _factor_file(tmp_path / "prev.safetensors", modules, alpha=4.0)
    outcome = _flux(tmp_path, "--text_encoder_lr 5e-5")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha, len(a.text_encoder_targets)) == ("loha", 8, 4.0, 24)
    assert a.text_encoder_targets[:2] == (
        "encoder.layers.0.self_attn.q_proj",
        "encoder.layers.0.self_attn.v_proj",
    )
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == 5e-5
    # --network_train_unet_only: LyCORIS's apply_to drops them
    outcome = _flux(tmp_path, "--network_train_unet_only")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert not plan_of(outcome, tmp_path).train_text_encoder


def test_sd3_factor_file_with_clip_modules(tmp_path):
    """SD3's [CLIP-L, CLIP-G, T5-XXL]: a LoKr file's CLIP-G modules alone (lora_te2_*): CLIP-G trains, CLIP-L
    does not; CLIP-L and CLIP-G at other layers: each its own target list (text_encoder_2_targets), and a
    module at a LoKr split of its own an [[adapter.text_encoder_blocks]] entry."""
    lokr = {"lokr_w1": (4, 4), "lokr_w2": (1536 // 4, 1536 // 4)}
    modules = {"lora_unet_joint_blocks_0_x_block_attn_proj": lokr}
    for i in range(32):
        modules[f"lora_te2_text_model_encoder_layers_{i}_mlp_fc2"] = {
            "lokr_w1": (4, 4),
            "lokr_w2": (320, 1280),
        }
    _factor_file(tmp_path / "prev.safetensors", modules)
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.text_encoder_targets == tuple(f"encoder.layers.{i}.mlp.fc2" for i in range(32))
    spec = out_path(tmp_path).read_text(encoding="utf-8")
    assert "text_encoder = false" in spec and "text_encoder_2 = true" in spec
    clip_l = {"lora_te1_text_model_encoder_layers_0_mlp_fc2": {"lokr_w1": (2, 2), "lokr_w2": (384, 1536)}}
    _factor_file(tmp_path / "prev.safetensors", {**modules, **clip_l})
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.text_encoder_targets == ("encoder.layers.0.mlp.fc2",)
    assert a.text_encoder_2_targets == tuple(f"encoder.layers.{i}.mlp.fc2" for i in range(32))
    (block,) = a.text_encoder_blocks  # CLIP-L's fc2 split 2 x 384 where the file's others split 4 x 320
    assert block.factor == 2 and re.search(block.pattern, "text_encoder.text_model.encoder.layers.0.mlp.fc2")
    assert not re.search(block.pattern, "text_encoder_2.text_model.encoder.layers.0.mlp.fc2")


def test_flux_file_with_text_encoder_modules(tmp_path):
    """LyCORIS numbers the encoder list kohya hands it (Flux: lora_te1 CLIP-L, lora_te2 T5-XXL): CLIP-L's
    LoCon modules are lora_flux's, at their ranks ([[adapter.text_encoder_blocks]]); T5-XXL's train while T5
    encodes every step (train.t5, LyCORIS's names: adapter.kohya_names), refused where they would stay the
    file's with T5 never encoding (outputs cached), idle at text_encoder_lr 0 (train.t5_idle, was DBS403);
    with --network_train_unet_only apply_to drops them."""
    clip = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    layers = {**FLUX_LAYERS, clip: (3072, 768, 4, 4.0)}
    layers["lora_te1_text_model_encoder_layers_1_self_attn_q_proj"] = (768, 768, 2, 1.0)
    _locon_file(tmp_path / "prev.safetensors", layers)
    outcome = _flux(tmp_path, "--text_encoder_lr 5e-5")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == 5e-5
    blocks = plan.adapter.text_encoder_blocks

    def te_rank(path):
        block = next(b for b in blocks if re.search(b.pattern, path))
        return block.rank, block.alpha

    assert te_rank("text_encoder.text_model.encoder.layers.0.mlp.fc1") == (4, 4.0)
    assert te_rank("text_encoder.text_model.encoder.layers.1.self_attn.q_proj") == (2, 1.0)
    assert te_rank("text_encoder.text_model.encoder.layers.0.self_attn.q_proj") == (0, 1.0)
    # T5-XXL's modules (LyCORIS's lora_te2_) train while T5 encodes every step: train.t5 at their ranks,
    # exported and read under LyCORIS's names (adapter.kohya_names)
    t5 = "lora_te2_encoder_block_0_layer_0_SelfAttention_q"
    _locon_file(tmp_path / "prev.safetensors", {**layers, t5: (4096, 4096, 2, 1.0)})
    outcome = _flux(tmp_path, "--text_encoder_lr 5e-5")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    blocks = plan.adapter.text_encoder_blocks
    assert plan.adapter.kohya_names == "lycoris" and plan.adapter.t5_targets
    assert "text_encoder_2" in {c.name for c in plan.precision.components if c.trainable == "lora"}
    assert te_rank("text_encoder_2.encoder.block.0.layer.0.SelfAttention.q") == (2, 1.0)
    assert te_rank("text_encoder_2.encoder.block.0.layer.0.SelfAttention.k") == (0, 1.0)
    assert te_rank("text_encoder.text_model.encoder.layers.0.mlp.fc1") == (4, 4.0)
    outcome = _flux(tmp_path, "--cache_text_encoder_outputs", allow=True)  # T5's would stay the file's
    assert fate(outcome, "dim_from_weights") == "unsupported" and t5 in messages(outcome, "DBS403")
    outcome = _flux(tmp_path, "--text_encoder_lr 0")  # CLIP-L and T5-XXL idle with the file's modules
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    idle = plan_of(outcome, tmp_path)
    assert (
        idle.idle_text_encoders == ("text_encoder", "text_encoder_2")
        and idle.adapter.kohya_names == "lycoris"
    )
    assert outcome.conversion.values[("train", "t5_idle")][0] == "kohya"
    _locon_file(tmp_path / "prev.safetensors", layers)
    outcome = _flux(tmp_path, "--network_train_unet_only")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert _rank(plan_of(outcome, tmp_path).adapter, "proj_out") == (4, 2.0)


def test_sd3_locon_file_builds_its_modules_at_their_ranks(tmp_path):
    w = 2432  # SD3.5 Large: 38 heads x 64
    layers = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": (3 * w, w, 16, 8.0),
        "lora_unet_joint_blocks_2_context_block_mlp_fc2": (w, 4 * w, 4, 4.0),
        "lora_unet_t_embedder_mlp_0": (w, 256, 4, 1.0),
    }
    _locon_file(tmp_path / "prev.safetensors", layers)
    outcome = _sd3(tmp_path, "--network_args algo=locon --scale_weight_norms 1.5")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "dim_from_weights") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lora" and (a.rank, a.alpha) == (16, 8.0) and a.init_partial
    assert (a.max_norm, a.max_norm_form) == (1.5, "lycoris")  # one norm per fused Linear, as on Flux
    assert len(a.fused) == 1  # the x block's qkv: one shared down
    assert _rank(a, "transformer_blocks.0.attn.to_v") == (16, 8.0)
    assert _rank(a, "transformer_blocks.2.ff_context.net.2") == (4, 4.0)
    assert _rank(a, "time_text_embed.timestep_embedder.linear_1") == (4, 1.0)
    assert _rank(a, "transformer_blocks.0.attn.add_q_proj") == (0, 1.0)


def test_sd3_file_with_clip_modules_and_t5(tmp_path):
    """SD3's list [CLIP-L, CLIP-G, T5-XXL] numbers as lora_sd3 does: CLIP-G's lora_te2 modules at their
    ranks (CLIP-L without any: it trains nothing), T5-XXL's lora_te3 train.t5, CLIP-G's text_projection (no
    kohya CLIP target) refused."""
    layers = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": (3 * 2432, 2432, 16, 8.0),
        "lora_te2_text_model_encoder_layers_3_self_attn_out_proj": (1280, 1280, 8, 8.0),
    }
    _locon_file(tmp_path / "prev.safetensors", layers)
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    spec = out_path(tmp_path).read_text(encoding="utf-8")
    assert "text_encoder = false" in spec and "text_encoder_2 = true" in spec
    block = next(
        b
        for b in plan.adapter.text_encoder_blocks
        if re.search(b.pattern, "text_encoder_2.text_model.encoder.layers.3.self_attn.out_proj")
    )
    assert (block.rank, block.alpha) == (8, 8.0)
    t5 = {"lora_te3_encoder_block_0_layer_0_SelfAttention_q": (4096, 4096, 4, 4.0)}
    _locon_file(tmp_path / "prev.safetensors", {**layers, **t5})
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)  # T5's lora_te3_ (SD3's names agree): train.t5 at its rank
    assert plan.adapter.t5_targets and plan.adapter.kohya_names == "kohya"
    assert "text_encoder_3" in {c.name for c in plan.precision.components if c.trainable == "lora"}
    extra = "lora_te2_text_projection"
    _locon_file(tmp_path / "prev.safetensors", {**layers, extra: (1280, 1280, 4, 4.0)})
    outcome = _sd3(tmp_path, allow=True)
    assert extra in messages(outcome, "DBS403"), errors(outcome)


def test_sd3_patch_convolution_in_the_file_at_its_rank(tmp_path):
    """LyCORIS's LoConModule on SD3's patch convolution (x_embedder.proj) at the file's rank and alpha:
    conv_targets = ["pos_embed.proj"] at conv_rank / conv_alpha, its block before the last rank-0 one
    (runtime test: test_lycoris_sd3_patch_file)."""
    save_file(
        {
            "lora_unet_x_embedder_proj.lora_down.weight": np.zeros((4, 16, 2, 2), np.float16),
            "lora_unet_x_embedder_proj.lora_up.weight": np.zeros((2432, 4, 1, 1), np.float16),
            "lora_unet_x_embedder_proj.alpha": np.array(2.0, np.float32),
            "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": np.zeros((8, 2432), np.float16),
            "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": np.zeros((3 * 2432, 8), np.float16),
            "lora_unet_joint_blocks_0_x_block_attn_qkv.alpha": np.array(8.0, np.float32),
        },
        str(tmp_path / "prev.safetensors"),
    )
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.conv_rank, a.conv_alpha, a.conv_targets) == (4, 2.0, ("pos_embed.proj",))
    assert _rank(a, "pos_embed.proj") == (4, 2.0)
    assert (a.rank, a.alpha) == (8, 8.0) and a.init_partial


def test_sd3_factor_file_patch_convolution_and_its_tucker_form(tmp_path):
    """A LoKr / LoHa file's patch convolution (SD3.5 large: 2432 x 16 x 2 x 2): conv_targets at the rank,
    alpha and Tucker form LyCORIS rebuilds (LokrModule decompose_both, factor 8, `lokr_t2`; LohaModule's
    `hada_t1` / `hada_t2`); a LoKr Tucker file without decompose_both, whose rank make_module_from_state_dict
    reads off `lokr_w2_a`'s columns (the output part), stops LyCORIS: DBS402. Shapes checked against
    lycoris-lora 4.1.3 on 36 factor / rank / split / Tucker cases (scratch run); runtime test:
    test_lycoris_sd3_patch_file."""
    w = 2432
    qkv = {"lokr_w1_a": (8, 2), "lokr_w1_b": (2, 8), "lokr_w2_a": (3 * w // 8, 2), "lokr_w2_b": (2, w // 8)}
    tucker = {
        "lokr_w1_a": (8, 2),  # 2432 = 8 x 304, 16 = 2 x 8 by factor 8
        "lokr_w1_b": (2, 2),
        "lokr_t2": (2, 2, 2, 2),
        "lokr_w2_a": (2, w // 8),
        "lokr_w2_b": (2, 8),
    }
    file = tmp_path / "prev.safetensors"
    _factor_file(
        file, {"lora_unet_joint_blocks_0_x_block_attn_qkv": qkv, "lora_unet_x_embedder_proj": tucker}, 2.0
    )
    outcome = _sd3(tmp_path, "--network_args algo=lokr use_tucker=True")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.factor, a.decompose_both, a.rank, a.alpha) == ("lokr", 8, True, 2, 2.0)
    assert (a.conv_rank, a.conv_alpha, a.conv_targets, a.tucker) == (2, 2.0, ("pos_embed.proj",), True)
    no_split = {"lokr_w1": (8, 2), **{k: v for k, v in tucker.items() if not k.startswith("lokr_w1")}}
    _factor_file(
        file, {"lora_unet_joint_blocks_0_x_block_attn_qkv": qkv, "lora_unet_x_embedder_proj": no_split}
    )
    assert "copy_ raises" in messages(_sd3(tmp_path, allow=True), "DBS402")
    loha = {"hada_t1": (4, 4, 2, 2), "hada_t2": (4, 4, 2, 2)}
    loha |= {f"hada_w{i}_{x}": (4, w if x == "a" else 16) for i in (1, 2) for x in "ab"}
    _factor_file(
        file,
        {"lora_unet_joint_blocks_0_x_block_attn_qkv": _loha(3 * w, w, 8), "lora_unet_x_embedder_proj": loha},
        1.0,
    )
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.conv_rank, a.conv_alpha, a.tucker) == ("loha", 8, 4, 1.0, True)


def test_factor_file_with_dora_scale_is_lycoris_weight_decomposition(tmp_path):
    """make_module_from_state_dict builds a module holding `dora_scale` with weight_decompose (wd_on_out's
    default: one magnitude per output row of the fused Linear): dora = true, started from the file's
    magnitudes; in some modules only: their blocks' own dora (was DBS403; runtime test:
    test_lycoris_flow_factor_file); another shape: DBS402."""
    lokr = {"lokr_w1": (4, 4), "lokr_w2": (2304, 768)}  # img_attn.qkv 9216 x 3072 by factor 4
    proj = {"lokr_w1": (4, 4), "lokr_w2": (768, 768)}
    modules = {
        "lora_unet_double_blocks_0_img_attn_qkv": {**lokr, "dora_scale": (9216, 1)},
        "lora_unet_double_blocks_0_img_attn_proj": {**proj, "dora_scale": (3072, 1)},
    }
    _factor_file(tmp_path / "prev.safetensors", modules)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_axis, a.init_partial) == ("lokr", True, "output", True)
    modules["lora_unet_double_blocks_0_img_attn_proj"] = proj
    _factor_file(tmp_path / "prev.safetensors", modules)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.init_partial) == ("lokr", False, True)
    (own,) = [b for b in a.blocks if b.dora == "on"]
    assert all(re.search(own.pattern, f"transformer_blocks.0.attn.to_{p}") for p in "qkv")
    assert not re.search(own.pattern, "transformer_blocks.0.attn.to_out.0")
    modules["lora_unet_double_blocks_0_img_attn_proj"] = {**proj, "dora_scale": (1, 3072)}
    _factor_file(tmp_path / "prev.safetensors", modules)
    assert "copy_ raises" in messages(_flux(tmp_path, allow=True), "DBS402")


def test_locon_file_with_dora_scale_is_lycoris_weight_decomposition(tmp_path):
    """A LoCon file's `dora_scale` (LoConModule with weight_decompose): dora = true, dora_form "lycoris"
    (runtime test: test_lycoris_flow_factor_file); in some denoiser modules only: their blocks' own dora
    (runtime test: test_lycoris_block_dora); with text-encoder modules among them, theirs too (their
    text-encoder blocks' dora; was DBS403)."""
    qkv, proj = "lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_img_attn_proj"
    tensors = {}
    for name, rows in ((qkv, 3 * W), (proj, W)):
        tensors[f"{name}.lora_down.weight"] = np.zeros((8, W), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((rows, 8), np.float16)
        tensors[f"{name}.alpha"] = np.array(4.0, np.float32)
        tensors[f"{name}.dora_scale"] = np.ones((rows, 1), np.float16)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _flux(tmp_path, "--network_args algo=locon dora_wd=True")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.dora, a.dora_form, a.init_partial) == ("lora", 8, True, "lycoris", True)
    del tensors[f"{proj}.dora_scale"]
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _flux(tmp_path, "--network_args algo=locon")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_form) == (False, "lycoris")
    own = [b for b in a.blocks if b.dora == "on"]
    assert len(own) == 1 and re.search(own[0].pattern, "transformer_blocks.0.attn.to_k")
    assert not re.search(own[0].pattern, "transformer_blocks.0.attn.to_out.0")
    clip = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    tensors[f"{clip}.lora_down.weight"] = np.zeros((8, 768), np.float16)
    tensors[f"{clip}.lora_up.weight"] = np.zeros((3072, 8), np.float16)
    tensors[f"{clip}.alpha"] = np.array(4.0, np.float32)
    tensors[f"{clip}.dora_scale"] = np.ones((3072, 1), np.float16)
    bare = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"  # a CLIP module without dora_scale
    tensors[f"{bare}.lora_down.weight"] = np.zeros((8, 768), np.float16)
    tensors[f"{bare}.lora_up.weight"] = np.zeros((768, 8), np.float16)
    tensors[f"{bare}.alpha"] = np.array(4.0, np.float32)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _flux(tmp_path, "--network_args algo=locon")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.dora is False and [b.dora for b in a.blocks].count("on") == 1
    text = {b.dora: b for b in a.text_encoder_blocks if b.rank}
    assert sorted(text) == ["adapter", "on"]
    assert re.search(text["on"].pattern, "text_encoder.text_model.encoder.layers.0.mlp.fc1")
    assert not re.search(text["on"].pattern, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj")
    assert re.search(text["adapter"].pattern, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj")


def test_full_file_starts_at_twice_its_diff(tmp_path):
    """A full file (`diff` / `diff_b`): LyCORIS builds FullModule on each module's layer at W + diff
    (create_network_from_weights), then train_network.py's load_weights adds the diff again (its load hook):
    kind full over the modules' layers, each fused module's parts, at init_scale 2 (checked with
    lycoris-lora 4.1.3; runtime test: test_lycoris_flow_whole_weights). CLIP modules are text targets;
    `--scale_weight_norms` is inert (FullModule's apply_max_norm scales nothing); T5-XXL's: train.t5 (full
    copies), T5's Linears the file lacks excluded; a T5 `diff_b` is DBS402 (kohya's save raises TypeError)."""
    layers = {
        "lora_unet_img_in": {"diff": (W, 64), "diff_b": (W,)},
        "lora_unet_double_blocks_0_img_attn_qkv": {"diff": (3 * W, W), "diff_b": (3 * W,)},
        "lora_te1_text_model_encoder_layers_0_mlp_fc1": {"diff": (3072, 768), "diff_b": (3072,)},
    }
    _factor_file(tmp_path / "prev.safetensors", layers, alpha=None)
    outcome = _flux(tmp_path, "--network_args algo=full --scale_weight_norms 1.0")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "inert"
    assert "W + 2 diff" in out_path(tmp_path).read_text()
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_scale, a.init_partial) == ("full", 2.0, True)
    assert set(a.denoiser_targets) == {"x_embedder", *(f"transformer_blocks.0.attn.to_{p}" for p in "qkv")}
    assert a.text_encoder_targets == ("encoder.layers.0.mlp.fc1",)
    t5 = {f"lora_te2_encoder_block_{i}_layer_0_SelfAttention_q": {"diff": (4096, 4096)} for i in (0, 5)}
    _factor_file(tmp_path / "prev.safetensors", {**layers, **t5}, alpha=None)
    outcome = _flux(tmp_path, "--network_args algo=full")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.t5_targets and plan.adapter.init_scale == 2.0
    (pattern,) = {b.pattern for b in plan.adapter.text_encoder_blocks}
    assert all(b.rank == 0 for b in plan.adapter.text_encoder_blocks)
    rows = [
        f"text_encoder_2.encoder.block.{i}.layer.{p}"
        for i in range(24)
        for p in ("0.SelfAttention.q", "0.SelfAttention.k", "0.SelfAttention.o", "1.DenseReluDense.wi_0")
    ]
    excluded = {r for r in rows if re.search(pattern, r)}
    assert excluded == set(rows) - {
        f"text_encoder_2.encoder.block.{i}.layer.0.SelfAttention.q" for i in (0, 5)
    }
    assert not re.search(pattern, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj")
    t5["lora_te2_encoder_block_5_layer_0_SelfAttention_q"]["diff_b"] = (4096,)
    _factor_file(tmp_path / "prev.safetensors", {**layers, **t5}, alpha=None)
    assert "TypeError" in messages(_flux(tmp_path, allow=True), "DBS402")


def test_full_file_final_layer_without_every_linear2(tmp_path):
    """Flux's final layer (`lora_unet_final_layer_linear`, diffusers' top-level `proj_out`, a suffix of every
    single block's `proj_out`, kohya's linear2) with one single block's linear2 only: create_network_from_
    weights builds exactly those modules, so the single blocks' others are `exclude`d (no trained copy)."""
    layers = {
        "lora_unet_final_layer_linear": {"diff": (64, W), "diff_b": (64,)},
        "lora_unet_single_blocks_3_linear2": {"diff": (W, 5 * W), "diff_b": (W,)},
    }
    _factor_file(tmp_path / "prev.safetensors", layers, alpha=None)
    outcome = _flux(tmp_path, "--network_args algo=full")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert set(a.denoiser_targets) == {"proj_out", "single_transformer_blocks.3.proj_out"}
    (pattern,) = {b.pattern for b in a.blocks}
    paths = [f"single_transformer_blocks.{i}.proj_out" for i in range(38)]
    kept = [p for p in paths if not re.search(pattern, p)]
    assert kept == ["single_transformer_blocks.3.proj_out"] and not re.search(pattern, "proj_out")


def test_sd3_full_file_starts_at_twice_its_diff(tmp_path):
    """The same on SD3: the joint blocks' fused q/k/v at init_scale 2; its patch convolution's 4-D `diff`
    (FullModule on the 2x2 convolution) a full copy there, conv_targets (runtime test:
    test_lycoris_sd3_patch_file)."""
    qkv = "lora_unet_joint_blocks_0_x_block_attn_qkv"
    _factor_file(tmp_path / "prev.safetensors", {qkv: {"diff": (3 * 64, 64)}}, alpha=None)
    outcome = _sd3(tmp_path, "--network_args algo=full")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_scale) == ("full", 2.0)
    assert set(a.denoiser_targets) == {f"transformer_blocks.0.attn.to_{p}" for p in "qkv"}
    _factor_file(
        tmp_path / "prev.safetensors",
        {qkv: {"diff": (3 * 64, 64)}, "lora_unet_x_embedder_proj": {"diff": (64, 16, 2, 2)}},
        alpha=None,
    )
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_scale, a.conv_targets) == ("full", 2.0, ("pos_embed.proj",))
    assert set(a.denoiser_targets) == {f"transformer_blocks.0.attn.to_{p}" for p in "qkv"}


def test_sd3_factor_file_dora_scale_on_the_patch_convolution(tmp_path):
    """A `dora_scale` on the patch convolution (LokrModule / LohaModule with weight_decompose there: one
    magnitude per output channel, (out, 1, 1, 1)) beside every other module's: dora = true, the patch
    convolution's too; the patch convolution's alone: a block of its own (its conv_rank / conv_alpha) with
    dora "on"; every module's but its: the q/k/v's block dora "on", the adapter's off (were DBS403); a
    (1, in, 1, 1) one: DBS402 (runtime test: test_lycoris_sd3_patch_file)."""
    w = 2432
    qkv = {"hada_w1_a": (3 * w, 8), "hada_w1_b": (8, w), "hada_w2_a": (3 * w, 8), "hada_w2_b": (8, w)}
    patch = {f"hada_w{i}_{x}": (w, 4) if x == "a" else (4, 64) for i in (1, 2) for x in "ab"}
    file = tmp_path / "prev.safetensors"
    modules = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": {**qkv, "dora_scale": (3 * w, 1)},
        "lora_unet_x_embedder_proj": {**patch, "dora_scale": (w, 1, 1, 1)},
    }
    _factor_file(file, modules)
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.conv_rank, a.conv_targets) == ("loha", True, 4, ("pos_embed.proj",))
    _factor_file(file, {**modules, "lora_unet_joint_blocks_0_x_block_attn_qkv": qkv})
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.conv_rank, a.conv_alpha) == (False, 4, 1.0)
    assert [(b.pattern, b.conv_rank, b.conv_alpha, b.dora) for b in a.blocks] == [
        (r"^(pos_embed\.proj)$", 4, 1.0, "on")
    ]
    _factor_file(file, {**modules, "lora_unet_x_embedder_proj": patch})
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.dora is False and [b.dora for b in a.blocks] == ["on"]
    assert re.search(a.blocks[0].pattern, "transformer_blocks.0.attn.to_q")
    assert not re.search(a.blocks[0].pattern, "pos_embed.proj")
    _factor_file(file, {**modules, "lora_unet_x_embedder_proj": {**patch, "dora_scale": (1, 16, 1, 1)}})
    assert "copy_ raises" in messages(_sd3(tmp_path, allow=True), "DBS402")


def test_sd3_locon_file_dora_scale_on_the_patch_convolution(tmp_path):
    """A LoCon file's `dora_scale` in every module, the patch convolution's (out, 1, 1, 1) too: dora = true,
    dora_form "lycoris" with the patch convolution at its rank (runtime test: test_lycoris_sd3_patch_file);
    a (1, in, 1, 1) one there: DBS403."""
    w, qkv, patch = 2432, "lora_unet_joint_blocks_0_x_block_attn_qkv", "lora_unet_x_embedder_proj"
    tensors = {
        f"{qkv}.lora_down.weight": np.zeros((8, w), np.float16),
        f"{qkv}.lora_up.weight": np.zeros((3 * w, 8), np.float16),
        f"{qkv}.alpha": np.array(4.0, np.float32),
        f"{qkv}.dora_scale": np.ones((3 * w, 1), np.float16),
        f"{patch}.lora_down.weight": np.zeros((4, 16, 2, 2), np.float16),
        f"{patch}.lora_up.weight": np.zeros((w, 4, 1, 1), np.float16),
        f"{patch}.alpha": np.array(2.0, np.float32),
        f"{patch}.dora_scale": np.ones((w, 1, 1, 1), np.float16),
    }
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _sd3(tmp_path, "--network_args algo=locon dora_wd=True")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_form, a.conv_rank, a.conv_targets) == (
        "lora",
        True,
        "lycoris",
        4,
        ("pos_embed.proj",),
    )
    tensors[f"{patch}.dora_scale"] = np.ones((1, 16, 1, 1), np.float16)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    assert "per input" in messages(_sd3(tmp_path, allow=True), "DBS403")


def test_chroma_locon_file_builds_the_final_layer_and_approximator(tmp_path):
    """--model_type chroma: LyCORIS matches the file's names against kohya's Chroma
    (library/chroma_models.py): its final layer and approximator Linears build at the file's ranks; Flux's
    modulation Linears, which Chroma lacks, build nothing (no module of that name)."""
    from test_convert_kohya_chroma import _chroma

    _locon_file(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_double_blocks_0_img_attn_qkv": (3 * W, W, 16, 8.0),
            "lora_unet_final_layer_linear": (64, W, 4, 2.0),
            "lora_unet_distilled_guidance_layer_layers_0_in_layer": (5120, 5120, 4, 2.0),
            "lora_unet_distilled_guidance_layer_out_proj": (W, 5120, 8, 8.0),
            "lora_unet_double_blocks_0_img_mod_lin": (6 * W, W, 4, 2.0),
        },
    )
    extra = "--network_module lycoris.kohya --network_weights prev.safetensors --dim_from_weights"
    outcome = _chroma(tmp_path, extra)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert plan.model.family == "chroma" and a.kind == "lora" and a.init_partial
    assert _rank(a, "proj_out") == (4, 2.0)
    assert _rank(a, "distilled_guidance_layer.layers.0.linear_1") == (4, 2.0)
    assert _rank(a, "distilled_guidance_layer.out_proj") == (8, 8.0)
    assert _rank(a, "transformer_blocks.0.attn.to_v") == (16, 8.0)
    assert _rank(a, "distilled_guidance_layer.layers.0.linear_2") == (0, 1.0)
    assert _rank(a, "single_transformer_blocks.0.proj_out") == (0, 1.0)


def test_sd3_locon_file_lora_mid_on_the_patch_convolution(tmp_path):
    """A LoCon file's `lora_mid` on the patch convolution (LoConModule with use_tucker: make_module_from_
    state_dict builds it when the file holds one): tucker = true at its rank, read by runtime/flow_init.py
    (runtime tests: test_lycoris_sd3_patch_file, test_lycoris_sd3); a `lora_mid` on a Linear module:
    DBS402 (LyCORIS builds no core there)."""
    w, qkv, patch = 2432, "lora_unet_joint_blocks_0_x_block_attn_qkv", "lora_unet_x_embedder_proj"
    tensors = {
        f"{qkv}.lora_down.weight": np.zeros((8, w), np.float16),
        f"{qkv}.lora_up.weight": np.zeros((3 * w, 8), np.float16),
        f"{qkv}.alpha": np.array(4.0, np.float32),
        f"{patch}.lora_down.weight": np.zeros((4, 16, 1, 1), np.float16),
        f"{patch}.lora_mid.weight": np.zeros((4, 4, 2, 2), np.float16),
        f"{patch}.lora_up.weight": np.zeros((w, 4, 1, 1), np.float16),
        f"{patch}.alpha": np.array(2.0, np.float32),
    }
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.tucker, a.conv_rank, a.conv_alpha, a.conv_targets) == (
        "lora",
        True,
        4,
        2.0,
        ("pos_embed.proj",),
    )
    # without --dim_from_weights: create_network at use_tucker / conv_dim, then load_weights of the file
    from test_convert_lycoris_sd3 import _sd3 as _sd3_args

    at_dim = {  # the q/k/v at the command's network_dim 16 / network_alpha 8
        **tensors,
        f"{qkv}.lora_down.weight": np.zeros((16, w), np.float16),
        f"{qkv}.lora_up.weight": np.zeros((3 * w, 16), np.float16),
        f"{qkv}.alpha": np.array(8.0, np.float32),
    }
    save_file(at_dim, str(tmp_path / "at_dim.safetensors"))
    args = f"--network_weights {tmp_path / 'at_dim.safetensors'} --network_args use_tucker=True conv_dim=4 "
    outcome = _sd3_args(tmp_path / "args", args + "conv_alpha=2")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "args").adapter
    assert (a.tucker, a.conv_rank, a.init_layers) == (True, 4, 2)
    bad = {**tensors, f"{qkv}.lora_mid.weight": np.zeros((8, 8, 1, 1), np.float16)}
    save_file(bad, str(tmp_path / "prev.safetensors"))
    assert "Tucker core on a Linear" in messages(_sd3(tmp_path, allow=True), "DBS402")


def test_flux_file_of_several_kinds_is_a_run_of_several_kinds(tmp_path):
    """A file mixing LoKr, full, LoCon and LoHa modules on the denoiser (was DBS403: one kind per adapter):
    create_network_from_weights builds each module by its keys, so the adapter is the LoKr modules' and the
    others blocks of their kind over their diffusers parts, placed first, full at init_scale 2 (W + 2 diff;
    runtime test: test_lycoris_mixed_flow_file); another kind's modules on T5-XXL (was DBS403) text-encoder
    blocks of their kind with train.t5. Refused: a T5 `diff_b` (DBS402: T5's Linears have no bias), a
    LoCon / LoHa module's Tucker core on a Linear (DBS402: LyCORIS's module builds none there, checked with
    lycoris-lora 4.1.3), another kind's module without alpha (DBS402: float(None))."""
    lokr = {"lokr_w1": (4, 4), "lokr_w2": (768, 768)}
    loha = {"hada_w1_a": (W, 2), "hada_w1_b": (2, W), "hada_w2_a": (W, 2), "hada_w2_b": (2, W)}
    modules = {
        "lora_unet_double_blocks_0_img_attn_proj": lokr,
        "lora_unet_double_blocks_0_img_attn_qkv": {"diff": (3 * W, W), "diff_b": (3 * W,)},
        "lora_unet_double_blocks_0_txt_attn_qkv": {"lora_down.weight": (2, W), "lora_up.weight": (3 * W, 2)},
        "lora_unet_double_blocks_0_txt_attn_proj": loha,
    }
    _factor_file(tmp_path / "prev.safetensors", modules)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_scale, a.init_partial) == ("lokr", 2.0, True) and a.fused
    kinds = {
        "transformer_blocks.0.attn.to_out.0": ("adapter", 1),
        "transformer_blocks.0.attn.to_k": ("full", 1),
        "transformer_blocks.0.attn.add_v_proj": ("lora", 2),
        "transformer_blocks.0.attn.to_add_out": ("loha", 2),
    }
    for path, want in kinds.items():
        block = next((b for b in a.blocks if re.search(b.pattern, path)), None)
        got = (block.kind, block.rank) if block is not None else ("adapter", a.rank)
        assert got[0] == want[0] and (want[0] == "adapter" or got[1] == want[1]), path
    assert set(a.denoiser_targets) == {
        *kinds,
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.to_v",
        "transformer_blocks.0.attn.add_q_proj",
        "transformer_blocks.0.attn.add_k_proj",
    }
    # T5-XXL's modules of other kinds (was DBS403): train.t5 with text-encoder blocks of their kind first,
    # the T5 Linears the file lacks at rank 0 (runtime test: test_lycoris_mixed_flow_file)
    t5 = {
        "lora_te2_encoder_block_0_layer_0_SelfAttention_q": {"diff": (4096, 4096)},
        "lora_te2_encoder_block_1_layer_1_DenseReluDense_wo": {
            "lora_down.weight": (2, 10240),
            "lora_up.weight": (4096, 2),
        },
    }
    _factor_file(tmp_path / "prev.safetensors", {**modules, **t5})
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_scale) == ("lokr", 2.0) and a.t5_targets
    t5_kinds = {
        "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q": ("full", 1),
        "text_encoder_2.encoder.block.1.layer.1.DenseReluDense.wo": ("lora", 2),
        "text_encoder_2.encoder.block.0.layer.0.SelfAttention.k": ("adapter", 0),
        "text_encoder_2.encoder.block.1.layer.1.DenseReluDense.wi_0": ("adapter", 0),
    }
    for path, want in t5_kinds.items():
        block = next(b for b in a.text_encoder_blocks if re.search(b.pattern, path))
        assert (block.kind, block.rank) == want, path
    # with --network_train_unet_only kohya leaves the T5 full module unused; beside no full module of the
    # denoiser dbspec's start would refuse its `diff` (DBS356): DBS403 at conversion
    denoiser = {n: m for n, m in modules.items() if "img_attn_qkv" not in n}
    _factor_file(tmp_path / "prev.safetensors", {**denoiser, **t5})
    unused = messages(_flux(tmp_path, "--network_train_unet_only", allow=True), "DBS403")
    assert "lora_te2_encoder_block_0_layer_0_SelfAttention_q" in unused and "DBS356" in unused
    t5["lora_te2_encoder_block_0_layer_0_SelfAttention_q"]["diff_b"] = (4096,)
    _factor_file(tmp_path / "prev.safetensors", {**modules, **t5})
    assert "no bias" in messages(_flux(tmp_path, allow=True), "DBS402")
    for extra, code, words in (
        (
            {
                "lora_unet_img_in": {
                    "lora_down.weight": (2, 64),
                    "lora_up.weight": (W, 2),
                    "lora_mid.weight": (2, 2),
                }
            },
            "DBS402",
            "no Tucker core",
        ),
        (  # a LoCon module's dora_scale per input column: LoConModule's (out, 1) copy_ raises
            {
                "lora_unet_double_blocks_0_txt_attn_qkv": {
                    "lora_down.weight": (2, W),
                    "lora_up.weight": (3 * W, 2),
                    "dora_scale": (1, W),
                }
            },
            "DBS402",
            "not LyCORIS's [9216, 1]",
        ),
        (  # a LoHa module's Tucker cores beside a LoKr adapter, on a Linear alike
            {"lora_unet_double_blocks_0_txt_attn_proj": {**loha, "hada_t1": (2, 2), "hada_t2": (2, 2)}},
            "DBS402",
            "LohaModule builds no Tucker core",
        ),
    ):
        _factor_file(tmp_path / "prev.safetensors", {**modules, **extra})
        assert words in messages(_flux(tmp_path, allow=True), code), words
    led = {  # LoCon modules at two ranks beside a full one: a LoRA adapter, its modules' ranks as blocks
        "lora_unet_double_blocks_0_img_attn_proj": {"lora_down.weight": (4, W), "lora_up.weight": (W, 4)},
        "lora_unet_double_blocks_0_txt_attn_proj": {"lora_down.weight": (4, W), "lora_up.weight": (W, 4)},
        **{n: m for n, m in modules.items() if "_qkv" in n},
    }
    _factor_file(tmp_path / "prev.safetensors", led)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.init_scale) == ("lora", 4, 1.0, 2.0) and a.fused
    assert _rank(a, "transformer_blocks.0.attn.add_k_proj") == (2, 1.0)
    assert next(b for b in a.blocks if re.search(b.pattern, "transformer_blocks.0.attn.to_k")).kind == "full"
    assert not any(re.search(b.pattern, "transformer_blocks.0.attn.to_out.0") for b in a.blocks)
    tensors = {f"{n}.{k}": np.zeros(s, np.float16) for n, m in modules.items() for k, s in m.items()}
    save_file(tensors, str(tmp_path / "prev.safetensors"))  # no alpha at all
    assert "float(None)" in messages(_flux(tmp_path, allow=True), "DBS402")


def test_sd3_file_of_several_kinds_is_a_run_of_several_kinds(tmp_path):
    """The same on SD3 (was DBS403): a LoHa file's context-block q/k/v beside a full x-block q/k/v and a
    LoCon x-block projection: a loha adapter with blocks of kind full / lora over the fused parts, init_scale
    2; the patch convolution as a full module (was DBS403): conv_targets with a full block there (runtime
    test: test_lycoris_mixed_flow_file), a 2-D diff there DBS402."""
    loha = {"hada_w1_a": (192, 2), "hada_w1_b": (2, 64), "hada_w2_a": (192, 2), "hada_w2_b": (2, 64)}
    modules = {
        "lora_unet_joint_blocks_0_context_block_attn_qkv": loha,
        "lora_unet_joint_blocks_0_x_block_attn_qkv": {"diff": (3 * 64, 64)},
        "lora_unet_joint_blocks_0_x_block_attn_proj": {
            "lora_down.weight": (4, 64),
            "lora_up.weight": (64, 4),
        },
    }
    _factor_file(tmp_path / "prev.safetensors", modules)
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.init_scale) == ("loha", 2, 2.0) and a.fused
    full = next(b for b in a.blocks if b.kind == "full")
    assert all(re.search(full.pattern, f"transformer_blocks.0.attn.to_{p}") for p in "qkv")
    assert not re.search(full.pattern, "transformer_blocks.0.attn.add_q_proj")
    lora = next(b for b in a.blocks if b.kind == "lora")
    assert (lora.rank, re.search(lora.pattern, "transformer_blocks.0.attn.to_out.0") is not None) == (4, True)
    # SD3's T5-XXL modules (lora_te3_, the third encoder) of other kinds (was DBS403): train.t5 with blocks
    t5 = {"lora_te3_encoder_block_0_layer_0_SelfAttention_o": {"diff": (4096, 4096)}}
    _factor_file(tmp_path / "prev.safetensors", {**modules, **t5})
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.t5_targets and a.init_scale == 2.0
    o, q = (f"text_encoder_3.encoder.block.0.layer.0.SelfAttention.{p}" for p in "oq")
    assert [(b.kind, b.rank) for b in a.text_encoder_blocks if re.search(b.pattern, o)][:1] == [("full", 1)]
    assert [b.rank for b in a.text_encoder_blocks if re.search(b.pattern, q)][:1] == [0]
    patch = {**modules, "lora_unet_x_embedder_proj": {"diff": (64, 16, 2, 2), "diff_b": (64,)}}
    _factor_file(tmp_path / "prev.safetensors", patch)
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.conv_targets == ("pos_embed.proj",) and a.init_scale == 2.0
    block = next(b for b in a.blocks if re.search(b.pattern, "pos_embed.proj"))
    assert (block.kind, block.conv_rank) == ("full", 1) and a.conv_rank == 1
    flat = {**modules, "lora_unet_x_embedder_proj": {"diff": (64, 64)}}  # a Linear's diff on the conv
    _factor_file(tmp_path / "prev.safetensors", flat)
    assert "FullModule's copy_ raises" in messages(_sd3(tmp_path, allow=True), "DBS402")


def test_sd3_file_of_several_kinds_with_a_tucker_patch_convolution(tmp_path):
    """SD3's patch convolution in LyCORIS's Tucker form beside modules of other kinds (was DBS403; a spec's
    DBS596): its block's own `tucker = "on"`, the adapter's off; a LoHa (`hada_t1` / `hada_t2`) or LoCon
    (`lora_mid`) patch module beside LoKr ones a block of its kind, the adapter's own kind's (LoHa beside
    LoCon) a block of the adapter's kind there; tensors LyCORIS's copy_ rejects DBS402. Runtime test:
    test_lycoris_sd3_mixed_tucker_file (each started at lycoris-lora's rebuilt outputs)."""
    w, patch, proj = 2432, "lora_unet_x_embedder_proj", "lora_unet_joint_blocks_0_x_block_attn_proj"
    qkv = {"lokr_w1_a": (8, 2), "lokr_w1_b": (2, 8), "lokr_w2_a": (3 * w // 8, 2), "lokr_w2_b": (2, w // 8)}
    lokr = {"lora_unet_joint_blocks_0_x_block_attn_qkv": qkv}
    loha = {"hada_t1": (2, 2, 2, 2), "hada_t2": (2, 2, 2, 2)}
    loha |= {f"hada_w{i}_{x}": (2, w if x == "a" else 16) for i in (1, 2) for x in "ab"}
    locon = {
        "lora_down.weight": (2, 16, 1, 1),
        "lora_mid.weight": (2, 2, 2, 2),
        "lora_up.weight": (w, 2, 1, 1),
    }
    for held, kind in ((loha, "loha"), (locon, "lora")):
        _factor_file(tmp_path / "prev.safetensors", {**lokr, patch: held}, 2.0)
        outcome = _sd3(tmp_path)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path).adapter
        assert (a.kind, a.tucker, a.conv_targets) == ("lokr", False, ("pos_embed.proj",))
        (block,) = [b for b in a.blocks if re.search(b.pattern, "pos_embed.proj")]
        assert (block.kind, block.tucker, block.conv_rank, block.conv_alpha) == (kind, "on", 2, 2.0)
    # the adapter's own kind's: a LoHa patch module and projection beside a LoCon q/k/v
    own = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": {
            "lora_down.weight": (4, w),
            "lora_up.weight": (3 * w, 4),
        },
        proj: _loha(w, w, 2),
        patch: loha,
    }
    _factor_file(tmp_path / "prev.safetensors", own, 2.0)
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.tucker, a.conv_rank) == ("loha", False, 2)
    (block,) = [b for b in a.blocks if re.search(b.pattern, "pos_embed.proj")]
    assert (block.kind, block.tucker) == ("adapter", "on")
    assert [b.kind for b in a.blocks if re.search(b.pattern, "transformer_blocks.0.attn.to_q")] == ["lora"]
    # what LyCORIS's make_module_from_state_dict / copy_ fails on
    half = {k: v for k, v in loha.items() if k != "hada_t2"}
    bad = {**locon, "lora_down.weight": (2, 16, 2, 2)}
    for held, why in ((half, "lacks `hada_t2`"), (bad, "not LoConModule's Tucker form")):
        _factor_file(tmp_path / "prev.safetensors", {**lokr, patch: held}, 2.0)
        assert why in messages(_sd3(tmp_path, allow=True), "DBS402")


def test_flux_file_of_several_kinds_with_oft_and_glora_modules(tmp_path):
    """Diag-OFT (a fused q/k/v, its `rescale` held), BOFT and GLoRA modules beside LoKr ones (was DBS403):
    each an [[adapter.blocks]] entry of its kind over its diffusers parts, at the values
    make_module_from_state_dict rebuilds it with (an OFT's block size its rank, its alpha the constraint,
    its `rescale` the block's rescaled; GLoRA's rank a2's rows; runtime test:
    test_lycoris_mixed_flow_file); a LoCon-led file with a Diag-OFT module likewise (the file has no
    LoKr / LoHa / full module: picked from the rebuilt kinds). A Diag-OFT module whose blocks span q, k
    and v converts too (its parts share its blocks, runtime/fused_oft.py; was DBS403), one whose rebuilt
    split differs from the file's is DBS402."""
    from dbspec.plan.boft import power2_factorization

    size, count = power2_factorization(W, 8)
    stages = bin(count - 1).count("1") + 1
    lokr = {"lokr_w1": (4, 4), "lokr_w2": (768, 768)}
    glora = {"a1.weight": (W, 2), "a2.weight": (2, W), "b1.weight": (W, 2), "b2.weight": (2, W)}
    modules = {
        "lora_unet_double_blocks_0_img_attn_proj": lokr,
        "lora_unet_double_blocks_0_img_attn_qkv": {"oft_blocks": (3 * W // 4, 4, 4), "rescale": (3 * W, 1)},
        "lora_unet_double_blocks_0_txt_attn_proj": {"oft_blocks": (stages, count, size, size)},
        "lora_unet_double_blocks_0_img_mlp_0": glora,
    }
    _factor_file(tmp_path / "prev.safetensors", modules, alpha=0.5)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_partial, a.init_scale) == ("lokr", True, 1.0) and a.fused and a.init_weights
    want = {
        "transformer_blocks.0.attn.to_out.0": ("adapter", None, None, None),
        "transformer_blocks.0.attn.to_q": ("diag-oft", 4, 0.5, "on"),
        "transformer_blocks.0.attn.to_v": ("diag-oft", 4, 0.5, "on"),
        "transformer_blocks.0.attn.to_add_out": ("boft", size, 0.5, "adapter"),
        "transformer_blocks.0.ff.net.0.proj": ("glora", 2, 0.5, "adapter"),
    }
    for path, (kind, rank, alpha, rescaled) in want.items():
        block = next((b for b in a.blocks if re.search(b.pattern, path)), None)
        if kind == "adapter":
            assert block is None or block.kind == "adapter", path
            continue
        assert (block.kind, block.rank, block.alpha, block.rescaled) == (kind, rank, alpha, rescaled), path
    assert set(a.denoiser_targets) == {*want, "transformer_blocks.0.attn.to_k"}

    led = {  # LoCon modules beside a Diag-OFT one: no LoKr / LoHa / full module
        "lora_unet_double_blocks_0_img_attn_proj": {"lora_down.weight": (4, W), "lora_up.weight": (W, 4)},
        "lora_unet_double_blocks_0_img_attn_qkv": modules["lora_unet_double_blocks_0_img_attn_qkv"],
    }
    _factor_file(tmp_path / "prev.safetensors", led, alpha=2.0)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.init_scale) == ("lora", 4, 2.0, 1.0) and a.fused
    block = next(b for b in a.blocks if re.search(b.pattern, "transformer_blocks.0.attn.to_k"))
    assert (block.kind, block.rank, block.alpha, block.rescaled) == ("diag-oft", 4, 2.0, "on")

    spanning = {**modules, "lora_unet_double_blocks_0_img_attn_qkv": {"oft_blocks": (3 * W // 9, 9, 9)}}
    _factor_file(tmp_path / "prev.safetensors", spanning, alpha=0.5)  # 3072 rows a part: 9 ∤ 3072
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    block = next(
        b
        for b in plan_of(outcome, tmp_path).adapter.blocks
        if re.search(b.pattern, "transformer_blocks.0.attn.to_k")
    )
    assert (block.kind, block.rank) == ("diag-oft", 9)
    odd = {**modules, "lora_unet_double_blocks_0_img_attn_qkv": {"oft_blocks": (4, 3 * W // 4, 3 * W // 4)}}
    _factor_file(tmp_path / "prev.safetensors", odd, alpha=0.5)  # s > n
    assert "copy_ raises" in messages(_flux(tmp_path, allow=True), "DBS402")


def test_flux_file_of_several_kinds_with_clip_and_final_layer_modules(tmp_path):
    """Other kinds' CLIP modules (was DBS403): text_encoder_targets over every kind's CLIP Linears, each
    other kind's an [[adapter.text_encoder_blocks]] entry of its kind (a LoCon-led file's CLIP LoCon modules
    blocks of kind lora at their rank); Flux's final layer as another kind's module (was DBS403): its block
    `^(proj_out)$`, the single blocks' linear2 the file lacks a rank-0 block (the target `proj_out` takes
    them along). A file whose LoKr modules are CLIP's alone beside the denoiser's LoCon ones is a LoKr
    adapter (its values the CLIP LoKr modules') with LoRA blocks (was DBS403: "no module of the
    denoiser"); with --network_train_unet_only (the text modules dropped) DBS403."""
    lokr = {"lokr_w1": (4, 4), "lokr_w2": (768, 768)}
    fc1 = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    q = "lora_te1_text_model_encoder_layers_1_self_attn_q_proj"
    modules = {
        "lora_unet_double_blocks_0_img_attn_proj": lokr,
        "lora_unet_final_layer_linear": {"diff": (64, W), "diff_b": (64,)},
        fc1: {"diff": (3072, 768)},
        q: {"lokr_w1": (4, 4), "lokr_w2": (192, 192)},
    }
    _factor_file(tmp_path / "prev.safetensors", modules)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_scale) == ("lokr", 2.0)
    assert set(a.denoiser_targets) == {"transformer_blocks.0.attn.to_out.0", "proj_out"}
    assert set(a.text_encoder_targets) == {"encoder.layers.0.mlp.fc1", "encoder.layers.1.self_attn.q_proj"}
    final = next(b for b in a.blocks if re.search(b.pattern, "proj_out"))
    assert (final.kind, final.rank) == ("full", 1)
    linear2 = next(b for b in a.blocks if re.search(b.pattern, "single_transformer_blocks.3.proj_out"))
    assert linear2.rank == 0
    fc1_path = "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    q_path = "text_encoder.text_model.encoder.layers.1.self_attn.q_proj"
    assert [b.kind for b in a.text_encoder_blocks if re.search(b.pattern, fc1_path)][:1] == ["full"]
    assert not any(re.search(b.pattern, q_path) for b in a.text_encoder_blocks)  # the adapter's LoKr

    led = {  # LoCon on the denoiser and CLIP-L, LoKr on CLIP-L alone
        "lora_unet_double_blocks_0_img_attn_proj": {"lora_down.weight": (4, W), "lora_up.weight": (W, 4)},
        fc1: {"lora_down.weight": (2, 768), "lora_up.weight": (3072, 2)},
        q: modules[q],
    }
    _factor_file(tmp_path / "prev.safetensors", led, alpha=2.0)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.factor, a.full_matrix, a.init_scale) == ("lokr", 4, True, 1.0)
    unet = next(b for b in a.blocks if re.search(b.pattern, "transformer_blocks.0.attn.to_out.0"))
    text = next(b for b in a.text_encoder_blocks if re.search(b.pattern, fc1_path))
    assert [(b.kind, b.rank, b.alpha) for b in (unet, text)] == [("lora", 4, 2.0), ("lora", 2, 2.0)]
    assert not any(re.search(b.pattern, q_path) for b in a.text_encoder_blocks)
    # --network_train_unet_only: LoCon modules alone are applied, but the file holds LoKr tensors, from
    # which dbspec's LoRA run cannot start (DBS357 at plan time): refused at conversion
    outcome = _flux(tmp_path, "--network_train_unet_only", allow=True)
    assert "holds lokr modules too" in messages(outcome, "DBS403")


def test_chroma_file_of_several_kinds_with_t5_modules_and_the_final_layer(tmp_path):
    """--model_type chroma, a file of LoKr, LoCon and full modules: its final layer (was DBS403) a block
    `^(proj_out)$` of its kind beside a rank-0 block for the single blocks' linear2 the file lacks; its
    T5-XXL modules (lora_te2_: kohya hands LyCORIS [DummyCLIPL, T5-XXL]) of other kinds (was DBS403)
    train.t5 with text-encoder blocks of their kind on Chroma's T5 (`text_encoder`), a full one making
    init_scale 2 (runtime test: test_lycoris_mixed_chroma). A CLIP-L module (lora_te1_), for which LyCORIS
    builds nothing on DummyCLIPL (kohya ignores it), stays DBS403: dbspec's start needs each file module's
    model (DBS356)."""
    from test_convert_kohya_chroma import _chroma

    lokr = {"lokr_w1": (4, 4), "lokr_w2": (768, 768)}
    modules = {
        "lora_unet_double_blocks_0_img_attn_proj": lokr,
        "lora_unet_double_blocks_0_txt_attn_proj": {"lora_down.weight": (2, W), "lora_up.weight": (W, 2)},
        "lora_unet_final_layer_linear": {"lora_down.weight": (4, W), "lora_up.weight": (64, 4)},
        "lora_te2_encoder_block_0_layer_0_SelfAttention_q": {"diff": (4096, 4096)},
        "lora_te2_encoder_block_2_layer_1_DenseReluDense_wi_1": {
            "lora_down.weight": (2, 4096),
            "lora_up.weight": (10240, 2),
        },
    }
    _factor_file(tmp_path / "prev.safetensors", modules)
    extra = "--network_module lycoris.kohya --network_weights prev.safetensors --dim_from_weights"
    outcome = _chroma(tmp_path, extra, cached="")  # T5 encodes every step
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert plan.model.family == "chroma" and (a.kind, a.init_scale) == ("lokr", 2.0) and a.t5_targets
    assert _rank(a, "proj_out") == (4, 1.0)
    assert _rank(a, "single_transformer_blocks.0.proj_out") == (0, 1.0)
    assert next(b for b in a.blocks if re.search(b.pattern, "proj_out")).kind == "lora"
    for path, want in {
        "text_encoder.encoder.block.0.layer.0.SelfAttention.q": ("full", 1),
        "text_encoder.encoder.block.2.layer.1.DenseReluDense.wi_1": ("lora", 2),
        "text_encoder.encoder.block.0.layer.0.SelfAttention.k": ("adapter", 0),
    }.items():
        block = next(b for b in a.text_encoder_blocks if re.search(b.pattern, path))
        assert (block.kind, block.rank) == want, path
    clip = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj": lokr}
    _factor_file(tmp_path / "prev.safetensors", {**modules, **clip})
    assert "DummyCLIPL" in messages(_chroma(tmp_path, extra, cached="", allow=True), "DBS403")


def _block(blocks, path: str):
    return next((b for b in blocks if re.search(b.pattern, path)), None)


def test_flux_file_of_several_kinds_with_dora_scale(tmp_path):
    """Modules holding `dora_scale` beside other kinds (was DBS403: make_module_from_state_dict builds them
    with weight_decompose, one magnitude per output row): every LoKr module's the adapter's `dora`, a LoCon
    module's (a fused q/k/v's (3 x out, 1), split over its parts' rows at the start) its block's, a LoHa
    module without one `dora = "off"`; a LoCon-led file's decomposed LoCon modules blocks of their own with
    `dora = "on"` in LoConModule's form (dora_form "lycoris"), a CLIP LoCon module's its text-encoder block's.
    A `dora_scale` of another shape: DBS402 (its copy_ raises). Runtime test: test_lycoris_mixed_flow_file
    (each module started at lycoris-lora's rebuilt outputs)."""
    lokr = {"lokr_w1": (4, 4), "lokr_w2": (768, 768), "dora_scale": (W, 1)}
    loha = {"hada_w1_a": (W, 2), "hada_w1_b": (2, W), "hada_w2_a": (W, 2), "hada_w2_b": (2, W)}
    locon = {"lora_down.weight": (2, W), "lora_up.weight": (3 * W, 2), "dora_scale": (3 * W, 1)}
    modules = {
        "lora_unet_double_blocks_0_img_attn_proj": lokr,
        "lora_unet_double_blocks_0_img_attn_qkv": {"diff": (3 * W, W)},
        "lora_unet_double_blocks_0_txt_attn_qkv": locon,
        "lora_unet_double_blocks_0_txt_attn_proj": loha,
    }
    _factor_file(tmp_path / "prev.safetensors", modules)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_form, a.dora_axis) == ("lokr", True, "lycoris", "output")
    want = {
        "transformer_blocks.0.attn.to_k": ("full", "adapter"),  # FullModule reads no weight_decompose
        "transformer_blocks.0.attn.add_v_proj": ("lora", "adapter"),  # decomposed as the adapter
        "transformer_blocks.0.attn.to_add_out": ("loha", "off"),
    }
    assert {p: (_block(a.blocks, p).kind, _block(a.blocks, p).dora) for p in want} == want
    assert _block(a.blocks, "transformer_blocks.0.attn.to_out.0") is None  # the adapter's, decomposed
    # the LoKr module without its dora_scale: the LoCon block "on", the LoHa's left as the adapter's (off)
    modules["lora_unet_double_blocks_0_img_attn_proj"] = {k: v for k, v in lokr.items() if k != "dora_scale"}
    _factor_file(tmp_path / "prev.safetensors", modules)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_form) == ("lokr", False, "lycoris")
    assert [_block(a.blocks, p).dora for p in want] == ["adapter", "on", "adapter"]
    # a LoHa module's magnitudes beside a LoKr adapter: its block's; of another shape DBS402
    modules["lora_unet_double_blocks_0_txt_attn_proj"] = {**loha, "dora_scale": (W, 1)}
    _factor_file(tmp_path / "prev.safetensors", modules)
    a = plan_of(_flux(tmp_path), tmp_path).adapter
    assert _block(a.blocks, "transformer_blocks.0.attn.to_add_out").dora == "on"
    modules["lora_unet_double_blocks_0_txt_attn_proj"] = {**loha, "dora_scale": (1, W)}
    _factor_file(tmp_path / "prev.safetensors", modules)
    assert "not LyCORIS's [3072, 1]" in messages(_flux(tmp_path, allow=True), "DBS402")

    fc1 = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    led = {  # LoCon-led: two LoCon modules at one rank, one decomposed; a decomposed CLIP LoCon; full
        "lora_unet_double_blocks_0_img_attn_proj": {"lora_down.weight": (2, W), "lora_up.weight": (W, 2)},
        "lora_unet_double_blocks_0_txt_attn_qkv": locon,
        "lora_unet_double_blocks_0_img_attn_qkv": {"diff": (3 * W, W)},
        fc1: {"lora_down.weight": (2, 768), "lora_up.weight": (3072, 2), "dora_scale": (3072, 1)},
    }
    _factor_file(tmp_path / "prev.safetensors", led)
    outcome = _flux(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_form, a.rank, a.init_scale) == ("lora", False, "lycoris", 2, 2.0)
    qkv = [_block(a.blocks, f"transformer_blocks.0.attn.add_{p}_proj") for p in "qkv"]
    assert {(b.kind, b.rank, b.dora) for b in qkv} == {("adapter", 2, "on")}  # one block, the fused whole
    assert _block(a.blocks, "transformer_blocks.0.attn.to_out.0") is None
    text = _block(a.text_encoder_blocks, "text_encoder.text_model.encoder.layers.0.mlp.fc1")
    assert (text.kind, text.dora) == ("adapter", "on")  # the plan names the adapter's kind so


def test_sd3_file_of_several_kinds_with_dora_scale_on_the_patch_convolution(tmp_path):
    """SD3's patch convolution's `dora_scale` ((out, 1, 1, 1): LoConModule / LohaModule with weight_decompose
    on the 2x2 convolution) beside LoKr modules (was DBS403): its block's `dora = "on"`. In its Tucker form
    (a block's own `tucker` and `dora`, was DBS403 / a spec's DBS583) it converts too."""
    w, patch = 2432, "lora_unet_x_embedder_proj"
    qkv = {"lokr_w1_a": (8, 2), "lokr_w1_b": (2, 8), "lokr_w2_a": (3 * w // 8, 2), "lokr_w2_b": (2, w // 8)}
    lokr = {"lora_unet_joint_blocks_0_x_block_attn_qkv": qkv}
    locon = {"lora_down.weight": (2, 16, 2, 2), "lora_up.weight": (w, 2, 1, 1), "dora_scale": (w, 1, 1, 1)}
    _factor_file(tmp_path / "prev.safetensors", {**lokr, patch: locon}, 2.0)
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.conv_targets) == ("lokr", False, ("pos_embed.proj",))
    (block,) = [b for b in a.blocks if re.search(b.pattern, "pos_embed.proj")]
    assert (block.kind, block.dora, block.conv_rank) == ("lora", "on", 2)
    _factor_file(tmp_path / "prev.safetensors", {**lokr, patch: {**locon, "dora_scale": (w, 1)}}, 2.0)
    assert "not LyCORIS's [2432, 1, 1, 1]" in messages(_sd3(tmp_path, allow=True), "DBS402")
    # the adapter's kind's (LoHa) Tucker patch module decomposed beside a LoCon q/k/v and a LoHa projection:
    # its block's `tucker` and `dora` both (was DBS403, a spec's DBS583)
    loha = {"hada_t1": (2, 2, 2, 2), "hada_t2": (2, 2, 2, 2), "dora_scale": (w, 1, 1, 1)}
    loha |= {f"hada_w{i}_{x}": (2, w if x == "a" else 16) for i in (1, 2) for x in "ab"}
    own = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": {
            "lora_down.weight": (4, w),
            "lora_up.weight": (3 * w, 4),
        },
        "lora_unet_joint_blocks_0_x_block_attn_proj": _loha(w, w, 2),
        patch: loha,
    }
    _factor_file(tmp_path / "prev.safetensors", own, 2.0)
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    block = next(b for b in a.blocks if re.search(b.pattern, "pos_embed.proj"))  # the first block decides
    assert (a.kind, a.dora, a.tucker, a.conv_targets) == ("loha", False, False, ("pos_embed.proj",))
    assert (block.kind, block.tucker, block.dora, block.conv_rank) == ("adapter", "on", "on", 2)


def test_sd3_file_of_several_kinds_whose_lokr_module_is_the_patch_convolution(tmp_path):
    """A file whose only LoKr (LoHa) module is SD3's patch convolution, beside LoCon and full modules (was
    DBS403, "no module of the denoiser"): create_network_from_weights builds that one LokrModule /
    LohaModule, so the adapter is of its kind with `conv_targets = ["pos_embed.proj"]` at the conv_rank,
    conv_alpha and LoKr split LyCORIS rebuilds it with, the Linears all the other kinds' blocks. Runtime
    test: test_lycoris_mixed_flow_file (started at lycoris-lora's rebuilt outputs)."""
    w, patch = 2432, "lora_unet_x_embedder_proj"
    others = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": {
            "lora_down.weight": (4, w),
            "lora_up.weight": (3 * w, 4),
        },
        "lora_unet_joint_blocks_0_x_block_attn_proj": {"diff": (w, w)},
    }
    lokr = {"lokr_w1": (8, 2), "lokr_w2_a": (w // 8, 2), "lokr_w2_b": (2, 8 * 4)}  # factor 8, rank 2
    loha = {f"hada_w{i}_{x}": (w, 2) if x == "a" else (2, 16 * 4) for i in (1, 2) for x in "ab"}
    for held, kind, split in ((lokr, "lokr", 8), (loha, "loha", None)):
        _factor_file(tmp_path / "prev.safetensors", {**others, patch: held}, 1.0)
        outcome = _sd3(tmp_path)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path).adapter
        assert (a.kind, a.conv_targets, a.conv_rank, a.conv_alpha, a.init_scale) == (
            kind,
            ("pos_embed.proj",),
            2,
            1.0,
            2.0,
        )
        assert split is None or a.factor == split
        assert not any(re.search(b.pattern, "pos_embed.proj") for b in a.blocks)  # the adapter's own
        for path, want in (
            ("transformer_blocks.0.attn.to_v", "lora"),
            ("transformer_blocks.0.attn.to_out.0", "full"),
        ):
            assert _block(a.blocks, path).kind == want, path
    # with no module of other kinds on the Linears it stays a file of one kind (lycoris_flow_factor_file)
    _factor_file(tmp_path / "prev.safetensors", {patch: lokr}, 1.0)
    assert "no module of the denoiser" in messages(_sd3(tmp_path, allow=True), "DBS403")
