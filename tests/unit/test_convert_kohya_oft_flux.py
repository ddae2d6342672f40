"""kohya's own OFT for Flux (`network_module = "networks.oft_flux"` with flux_train_network.py, sd-scripts
networks/oft_flux.py): once refused (DBS403), now [adapter] kind "diag-oft" with form "kohya" on diffusers'
Flux. The expectations are what kohya's create_network and OFTNetwork do with the arguments, written out
here from its code, not read back from the converter: network_dim the number of blocks per part (4 when not
given), network_alpha the constraint per row, `enable_all_linear` read as bool() of a string; by default the
Linears of kohya's SelfAttention (the double blocks' img_attn / txt_attn qkv and proj, no single block),
with enable_all_linear every Linear of the double and single blocks (no embedder, no final layer); its fused
qkv / linear1 rows split into diffusers' parts, each its own blocks; the transformer alone, one optimizer
group. tests/runtime/test_kohya_oft_flux.py checks the layers and the export."""

from __future__ import annotations

import struct

import pytest
from convert_kit import codes, component_file, errors, expressible, fate, images, kohya, messages, plan_of

FLUX = "black-forest-labs/FLUX.1-dev"
BASE = (
    f"accelerate launch --mixed_precision bf16 flux_train_network.py --pretrained_model_name_or_path {FLUX} "
    "--clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors --ae ae.safetensors --train_data_dir x "
    "--resolution 512 --cache_latents_to_disk --save_model_as safetensors --sdpa --seed 42 "
    "--mixed_precision bf16 --save_precision bf16 --network_module networks.oft_flux --optimizer_type adamw "
    "--learning_rate 1e-4 --max_train_steps 100 --timestep_sampling shift --discrete_flow_shift 3.1582 "
    "--model_prediction_type raw --guidance_scale 1.0"
)
# kohya's SelfAttention Linears in diffusers' names, per double block (FLUX.1: 19)
ATTENTION = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
# DoubleStreamBlock's Linears (img_/txt_ mod.lin, attn.qkv, attn.proj, mlp.0, mlp.2) and SingleStreamBlock's
# (linear1 = q, k, v, proj_mlp; linear2 = proj_out; modulation.lin = norm.linear)
DOUBLE_LINEARS = {
    *ATTENTION,
    *("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
    *("norm1.linear", "norm1_context.linear"),
}
SINGLE_LINEARS = {"attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear"}


def _flux(tmp_path, extra: str = "", *, allow: bool = False):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    return kohya(tmp_path, allow=allow, command=f"{BASE} {extra}")


def _adapted(targets) -> set[str]:
    """The FLUX.1 module paths the targets name, by peft's rule (the path or a `.`-suffix)."""
    paths = [f"transformer_blocks.{i}.{p}" for i in range(19) for p in DOUBLE_LINEARS]
    paths += [f"single_transformer_blocks.{i}.{p}" for i in range(38) for p in SINGLE_LINEARS]
    paths += ["proj_out", "norm_out.linear", "x_embedder", "context_embedder"]
    return {p for p in paths if any(p == t or p.endswith("." + t) for t in targets)}


def test_default_is_the_double_blocks_attention_per_part(tmp_path):
    outcome = _flux(tmp_path, "--network_dim 8 --network_alpha 0.001 --unet_lr 2e-4 --text_encoder_lr 5e-5")
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.oft_form, a.oft_blocks, a.oft_constraint) == ("diag-oft", "kohya", 8, 0.001)
    assert _adapted(a.denoiser_targets) == {
        f"transformer_blocks.{i}.{p}" for i in range(19) for p in ATTENTION
    }
    assert a.text_encoder_targets == () and a.fused == () and not a.oft_rescaled and not a.bypass
    assert plan.train_denoiser and not plan.train_text_encoder  # OFTNetwork adapts the transformer alone
    assert plan.optimizer.lr == 2e-4  # its one group at unet_lr
    assert plan.checkpoints.exports == ("kohya_lora",)
    for key in ("network_module", "network_dim", "network_alpha"):
        assert fate(outcome, key) == "mapped", key
    assert "DBS403" not in codes(outcome)


@pytest.mark.parametrize("value", ["True", "False"])  # create_network: bool() of the string, "False" too
def test_enable_all_linear_is_every_block_linear(tmp_path, value):
    outcome = _flux(tmp_path, f"--network_train_unet_only --network_args enable_all_linear={value}")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.oft_blocks, a.oft_constraint) == (4, 1.0)  # network_dim None: 4; train_network's alpha 1
    expected = {f"transformer_blocks.{i}.{p}" for i in range(19) for p in DOUBLE_LINEARS}
    expected |= {f"single_transformer_blocks.{i}.{p}" for i in range(38) for p in SINGLE_LINEARS}
    assert _adapted(a.denoiser_targets) == expected  # no final layer, no embedder
    assert fate(outcome, "network_args") == "mapped"


def test_empty_enable_all_linear_and_other_args_keep_the_attention(tmp_path):
    outcome = _flux(
        tmp_path,
        "--network_dim 16 --network_dropout 0.1 --scale_weight_norms 1 "
        "--network_args enable_all_linear= rank_dropout=0.2",
    )
    a = plan_of(outcome, tmp_path).adapter
    assert a.oft_blocks == 16 and "proj_mlp" not in {t.rsplit(".", 1)[-1] for t in a.denoiser_targets}
    assert "single_transformer_blocks" not in " ".join(a.denoiser_targets)
    text = messages(outcome, "DBS405")
    assert "reads only enable_all_linear" in text and "never reads the dropout" in text
    assert "apply_max_norm_regularization" in text


def test_a_dim_that_does_not_divide_the_width_is_refused(tmp_path):
    outcome = _flux(tmp_path, "--network_dim 5", allow=True)
    assert "DBS402" in codes(outcome)
    assert "does not" in messages(outcome, "DBS402") and any("3072" in e for e in errors(outcome))


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ("--dim_from_weights", "DBS402"),  # create_network_from_weights(1, None, ...)
        ("--unet_lr 0", "DBS403"),
        ("--network_train_text_encoder_only", "DBS402"),
    ],
)
def test_not_expressed(tmp_path, extra, code):
    outcome = _flux(tmp_path, extra, allow=True)
    assert code in codes(outcome), errors(outcome)


def test_fp8_base_is_the_cast_backend_under_the_rotation(tmp_path):
    """--fp8_base (was DBS403, a spec's DBS522): kohya's oft_flux rotates `org_module.weight.to(float32)`, the
    float8 weight upcast, which the cast backend's weight reads as (tests/runtime/test_kohya_oft_fp8_base.py):
    the transformer stored as float8 under kohya's OFT."""
    plan = plan_of(expressible(_flux(tmp_path, "--fp8_base --network_train_unet_only")), tmp_path)
    a, p = plan.adapter, plan.precision
    assert (a.kind, a.oft_form) == ("diag-oft", "kohya")
    assert p.quantize_backend == "cast"
    assert {c.name: c.quantized for c in p.components}["unet"] == "fp8"


def test_rate_0_trains_on_adafactors_relative_step(tmp_path):
    """--unet_lr 0 with kohya's Adafactor (relative_step): kohya pops the group's rate and Adafactor
    computes its own, so the blocks train: Adafactor's relative step at its first step's rate (issue 12)."""
    outcome = _flux(tmp_path, "--optimizer_type Adafactor --unet_lr 0")  # the last --optimizer_type wins
    assert not codes(outcome) & {"DBS402", "DBS403"}, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert (plan.optimizer.kind, plan.optimizer.lr, plan.optimizer.adafactor.relative_step) == (
        "adafactor",
        1e-2,
        True,
    )
    assert plan.train_denoiser and plan.adapter.oft_form == "kohya"


@pytest.mark.parametrize("all_linear", [False, True])
def test_chroma_is_flux_without_the_modulation_linears(tmp_path, all_linear):
    """--model_type chroma: OFTNetwork picks SelfAttention (or DoubleStreamBlock / SingleStreamBlock) by
    class in library/chroma_models.py's Chroma as in Flux; its blocks have no modulation Linear and its
    width is Flux's, so the layers are Flux's less norm1.linear / norm1_context.linear / norm.linear."""
    from test_convert_kohya_chroma import _chroma

    extra = "--network_module networks.oft_flux --network_dim 8 --network_alpha 0.001"
    outcome = _chroma(tmp_path, extra + (" --network_args enable_all_linear=True" if all_linear else ""))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert plan.model.family == "chroma" and "DBS403" not in codes(outcome)
    assert (a.kind, a.oft_form, a.oft_blocks, a.oft_constraint) == ("diag-oft", "kohya", 8, 0.001)
    if all_linear:
        expected = {
            f"transformer_blocks.{i}.{p}" for i in range(19) for p in DOUBLE_LINEARS if "norm" not in p
        }
        expected |= {
            f"single_transformer_blocks.{i}.{p}" for i in range(38) for p in SINGLE_LINEARS - {"norm.linear"}
        }
    else:
        expected = {f"transformer_blocks.{i}.{p}" for i in range(19) for p in ATTENTION}
    assert _adapted(a.denoiser_targets) == expected  # no embedder, no final layer, no approximator
    assert a.text_encoder_targets == () and not plan.train_text_encoder
    assert plan.checkpoints.exports == ("kohya_lora",)


def _oft_flux_file(path, blocks: int, alpha: float, mlp: bool = False) -> None:
    """kohya's networks.oft_flux file (OFTNetwork.save_weights): a ParameterList of blocks per module, one
    entry per part of a fused layer's rows; small blocks (the plan reads the header alone)."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    modules = [("double_blocks_0_img_attn_qkv", 3), ("double_blocks_0_img_attn_proj", 1)]
    for name, parts in modules + ([("double_blocks_0_img_mlp_0", 1)] if mlp else []):
        for part in range(parts):
            tensors[f"oft_unet_{name}.oft_blocks.{part}"] = torch.zeros(blocks, 2, 2)
        tensors[f"oft_unet_{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))


def test_network_weights_start_the_blocks(tmp_path):
    _oft_flux_file(tmp_path / "prev.safetensors", 8, 0.001)
    outcome = _flux(tmp_path, "--network_dim 8 --network_alpha 0.001 --network_weights prev.safetensors")
    a = plan_of(outcome, tmp_path).adapter
    # OFTNetwork.load_weights: load_state_dict(strict=False) after apply_to
    assert a.init_weights == str(tmp_path / "prev.safetensors") and a.init_partial and a.init_layers == 2
    assert fate(outcome, "network_weights") == "mapped"


def test_network_weights_of_another_block_count_crash(tmp_path):
    """load_state_dict raises on the shape."""
    _oft_flux_file(tmp_path / "prev.safetensors", 4, 0.001)
    outcome = _flux(
        tmp_path, "--network_dim 8 --network_alpha 0.001 --network_weights prev.safetensors", allow=True
    )
    assert "DBS402" in codes(outcome), errors(outcome)


def test_network_weights_of_another_alpha_train_at_network_alphas_constraint(tmp_path):
    """oft_flux's OFTModule fixes each part's constraint (alpha x part width) when it is built; the file's
    alpha only fills the buffer save_weights writes: init_alpha "ignore", DBS404."""
    _oft_flux_file(tmp_path / "prev.safetensors", 8, 0.01)
    outcome = _flux(tmp_path, "--network_dim 8 --network_alpha 0.001 --network_weights prev.safetensors")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.oft_blocks, a.oft_constraint, a.init_alpha, a.init_layers) == (8, 0.001, "ignore", 2)
    said = messages(outcome, "DBS404")
    assert "`oft_unet_double_blocks_0_img_attn_proj.alpha` is 0.01, not the network's 0.001" in said


@pytest.mark.parametrize("mlp", [False, True])
def test_dim_from_weights_builds_the_network_from_the_file(tmp_path, mlp):
    """create_network_from_weights: dim from the first tensor outside a qkv module, alpha from the first
    `.alpha`, enable_all_linear when a tensor's name holds `_mlp`; network_dim / network_alpha unread."""
    _oft_flux_file(tmp_path / "prev.safetensors", 8, 0.001, mlp)
    outcome = _flux(tmp_path, "--network_dim 16 --network_weights prev.safetensors --dim_from_weights")
    a = plan_of(outcome, tmp_path).adapter
    stored = struct.unpack("f", struct.pack("f", 0.001))[0]  # the file's float32 alpha, as .item() reads it
    assert (a.oft_blocks, a.oft_constraint) == (8, stored) and a.init_partial
    assert ("proj_mlp" in " ".join(a.denoiser_targets)) == mlp
    assert fate(outcome, "network_dim") == "inert" and fate(outcome, "dim_from_weights") == "mapped"


def test_plan_summary_names_oft_flux(tmp_path):
    from dbspec.plan.summary import adapter_rows

    a = plan_of(_flux(tmp_path, "--network_dim 8"), tmp_path).adapter
    assert dict(adapter_rows(a, "transformer"))["adapter"].startswith(
        "diag-oft (kohya's networks.oft_flux: 8 orthogonal blocks of output rows per layer part"
    )
