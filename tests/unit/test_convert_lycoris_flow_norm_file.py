"""lycoris.kohya --dim_from_weights on flux_train_network.py / sd3_train_network.py with a file holding
LyCORIS NormModules (`w_norm` / `b_norm`, a train_norm run's; dbspec/convert/kohya/lycoris_flow_norms.py):
create_network_from_weights builds a NormModule on each module the file names, CLIP's LayerNorms trained
as offsets (`text_encoder_norms`, SD3's CLIP-G its own list), started from the file beside the denoiser's
LoCon / LoKr / Diag-OFT modules; T5's T5LayerNorm, the denoiser's affine-less LayerNorms and RMSNorms stop
kohya (DBS402); a name naming no module, or a file of NormModules alone, is DBS403 (runtime test:
tests/runtime/test_lycoris_flow_norm_file.py)."""

from __future__ import annotations

import numpy as np
from convert_kit import codes, errors, messages, plan_of
from dbspec.convert.kohya.lycoris_file import clip_text
from safetensors.numpy import save_file
from test_convert_lycoris_flow_dim_from_weights import W, _flux, _sd3

QKV = "lora_unet_double_blocks_0_img_attn_qkv"
CLIP_NORMS = [p for p, cls, _ in clip_text(12) if cls == "LayerNorm"]
LOCON = {
    f"{QKV}.lora_down.weight": np.zeros((4, W), np.float16),
    f"{QKV}.lora_up.weight": np.zeros((3 * W, 4), np.float16),
    f"{QKV}.alpha": np.array(2.0, np.float32),
}


def _norm(name: str, width: int, bias: bool = True) -> dict[str, np.ndarray]:
    out = {f"{name}.w_norm": np.zeros(width, np.float16)}
    return out | ({f"{name}.b_norm": np.zeros(width, np.float16)} if bias else {})


def _save(tmp_path, *parts: dict[str, np.ndarray]) -> None:
    save_file({k: v for part in parts for k, v in part.items()}, str(tmp_path / "prev.safetensors"))


def test_flux_clip_norms_beside_locon_lokr_and_diag_oft(tmp_path):
    clip = "lora_te1_text_model_encoder_layers_{}_layer_norm{}"
    norms = [_norm(clip.format(i, j), 768) for i in (0, 5) for j in (1, 2)]
    oft = {f"{QKV}.oft_blocks": np.zeros((3 * W // 16, 16, 16), np.float16), f"{QKV}.alpha": np.array(0.0)}
    lokr = {
        f"{QKV}.lokr_w1": np.zeros((4, 4), np.float16),
        f"{QKV}.lokr_w2": np.zeros((3 * W // 4, W // 4), np.float16),
        f"{QKV}.alpha": np.array(0.0, np.float32),
    }
    for kind, module in (("lora", LOCON), ("diag-oft", oft), ("lokr", lokr)):
        _save(tmp_path, module, *norms)
        outcome = _flux(tmp_path)
        assert not {"DBS402", "DBS403"} & codes(outcome), (kind, errors(outcome))
        plan = plan_of(outcome, tmp_path)
        a = plan.adapter
        assert a.kind == kind and a.init_partial and plan.train_text_encoder, kind
        picked = {p for p in CLIP_NORMS if any(p == t or p.endswith("." + t) for t in a.text_encoder_norms)}
        assert picked == {f"text_model.encoder.layers.{i}.layer_norm{j}" for i in (0, 5) for j in (1, 2)}
        assert a.text_encoder_targets == ()  # no CLIP Linear in the file
    # --network_train_unet_only: apply_to drops the text encoders' NormModules
    _save(tmp_path, LOCON, *norms)
    a = plan_of(_flux(tmp_path, "--network_train_unet_only"), tmp_path).adapter
    assert a.text_encoder_norms == ()


def test_sd3_clip_g_norms_get_their_own_list(tmp_path):
    qkv = "lora_unet_joint_blocks_0_x_block_attn_qkv"
    w = 2432
    locon = {
        f"{qkv}.lora_down.weight": np.zeros((4, w), np.float16),
        f"{qkv}.lora_up.weight": np.zeros((3 * w, 4), np.float16),
        f"{qkv}.alpha": np.array(2.0, np.float32),
    }
    # CLIP-L's layer 0 and CLIP-G's layer 20: one suffix list would pick other norms in each encoder
    _save(
        tmp_path,
        locon,
        _norm("lora_te1_text_model_encoder_layers_0_layer_norm1", 768),
        _norm("lora_te2_text_model_encoder_layers_20_layer_norm1", 1280),
    )
    outcome = _sd3(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.text_encoder_norms == ("layers.0.layer_norm1",)
    assert plan.adapter.text_encoder_2_norms == ("layers.20.layer_norm1",)


def test_norm_files_kohya_fails_on_or_dbspec_refuses(tmp_path):
    # the denoiser's norms: affine-less LayerNorm (first step), RMSNorm (no `_norm`: copy_ raises)
    for name in ("lora_unet_double_blocks_0_img_norm1", "lora_unet_double_blocks_0_img_attn_norm_query_norm"):
        _save(tmp_path, LOCON, _norm(name, 128))
        outcome = _flux(tmp_path, allow=True)
        assert "DBS402" in codes(outcome) and name in messages(outcome, "DBS402"), name
    # T5-XXL's T5LayerNorm (Flux's lora_te2_): not supported by NormModule
    t5 = "lora_te2_encoder_block_0_layer_0_layer_norm"
    _save(tmp_path, LOCON, _norm(t5, 4096, bias=False))
    outcome = _flux(tmp_path, allow=True)
    assert "DBS402" in codes(outcome) and "T5LayerNorm" in messages(outcome, "DBS402")
    # w_norm on a CLIP Linear
    _save(tmp_path, LOCON, _norm("lora_te1_text_model_encoder_layers_0_mlp_fc1", 3072))
    assert "DBS402" in codes(_flux(tmp_path, allow=True))
    # a name no module of kohya's models has (SD3's T5 prefix on Flux): LyCORIS skips it
    _save(tmp_path, LOCON, _norm("lora_te3_encoder_block_0_layer_0_layer_norm", 4096, bias=False))
    outcome = _flux(tmp_path, allow=True)
    assert "DBS403" in codes(outcome) and "names no layer" in messages(outcome, "DBS403")
    # NormModules alone: no denoiser module
    _save(tmp_path, _norm("lora_te1_text_model_encoder_layers_0_layer_norm1", 768))
    outcome = _flux(tmp_path, allow=True)
    assert "DBS403" in codes(outcome) and "NormModules alone" in messages(outcome, "DBS403")
