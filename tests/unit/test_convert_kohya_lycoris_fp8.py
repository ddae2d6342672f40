"""kohya's --fp8_base with LyCORIS modules that read or take the layer's own weight (issue 12;
dbspec/convert/kohya/lycoris_fp8.py): lycoris-lora 4.1.3's modules on float8_e4m3fn weights in the order
kohya's scripts cast them (on the CPU: torch implements no float8 add / sub there either), and the
conversions that follow. SD 1.x/2.x and SDXL cast after apply_to, so FullModule's layers stay float (their
full entries convert: tests/runtime/test_lycoris_full_fp8_base.py) while Diag-OFT's default forward stops at
its first step; Flux / SD3 / Chroma cast as they load, so FullModule.apply_to stops; and
prepare_text_encoder_fp8 reads T5-XXL's first query weight, which a FullModule there has deleted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from convert_kit import codes, component_file, errors, images, kohya, messages, plan_of
from safetensors.numpy import save_file
from test_convert_kohya_refusals_audit import _convert, _flux, _sd
from test_convert_lycoris_flow_file_t5_full_output import FLUX

FP8 = torch.float8_e4m3fn
SD3_PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv"]
text_encoder_target_module = [{clip}]
[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "{algo}"
"""


def _sd3(algo: str, clip: str = "") -> str:
    return SD3_PRESET.format(algo=algo, clip=clip)


def _autocast_forward(module, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return module(x)


def test_lycoris_modules_on_float8_weights_in_kohyas_order():
    """DiagOFTModule built and applied on the float layer, the layer then cast (train_network.py's order):
    its default forward raises at `new_weight - base_weight`, its bypass forward runs. FullModule on a layer
    cast before the network is built (flux_train_network.py's): apply_to raises; applied first, the layer
    holds no weight for the cast and the module computes with its float copy."""
    oft = pytest.importorskip("lycoris.modules.diag_oft")
    full = pytest.importorskip("lycoris.modules.full")
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    for bypass in (None, True):
        layer = torch.nn.Linear(8, 16)
        module = oft.DiagOFTModule("oft", layer, 1.0, 4, 1, bypass_mode=bypass)
        module.apply_to()
        layer.to(FP8)
        torch.nn.init.normal_(module.oft_blocks, std=0.1)
        if bypass:
            assert _autocast_forward(module, x).dtype == torch.bfloat16
        else:
            with pytest.raises(NotImplementedError, match="Float8_e4m3fn"):
                _autocast_forward(module, x)
    module = full.FullModule("full", torch.nn.Linear(8, 16).to(FP8), 1.0)
    with pytest.raises(NotImplementedError, match="Float8_e4m3fn"):
        module.apply_to()
    layer = torch.nn.Linear(8, 16)
    weight = layer.weight.detach().clone()
    module = full.FullModule("full", layer, 1.0)
    module.apply_to()
    layer.to(FP8)
    assert not hasattr(layer, "weight") and module.weight.dtype == torch.float32
    assert torch.equal(module.weight, weight)
    want = torch.nn.functional.linear(x.bfloat16(), weight.bfloat16(), module.bias.bfloat16())
    assert torch.equal(_autocast_forward(module, x), want)


def test_full_module_on_t5s_first_query_hides_the_weight_kohyas_fp8_check_reads():
    """library/flux_utils.py get_t5xxl_actual_dtype reads `encoder.block[0].layer[0].SelfAttention.q.weight`
    (prepare_text_encoder_fp8, after apply_to): a FullModule there deleted it."""
    full = pytest.importorskip("lycoris.modules.full")
    from transformers import T5Config, T5EncoderModel

    t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    full.FullModule("q", t5.encoder.block[0].layer[0].SelfAttention.q, 1.0).apply_to()
    with pytest.raises(AttributeError, match="weight"):
        t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype  # noqa: B018 (kohya's read)


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_diag_oft_entries_in_the_default_forward_stop_kohya_with_fp8_base(tmp_path, family):
    """DBS402 naming the entry and diag_oft.py's line; the entry's own bypass_mode runs in kohya (dbspec's
    Diag-OFT blocks on a quantised base stay its own refusal, DBS403)."""
    preset = _sd if family == "sd" else _flux
    entry = "module_algo_map.FeedForward" if family == "sd" else "name_algo_map.double_blocks.*.img_attn.qkv"
    flags = "--fp8_base --mixed_precision bf16"
    outcome = _convert(tmp_path, family, '"algo=locon"', preset("diag-oft"), flags)
    found = messages(outcome, "DBS402")
    assert entry in found and "diag_oft.py line 247" in found, errors(outcome)
    (tmp_path / "bypass").mkdir()
    outcome = _convert(
        tmp_path / "bypass", family, '"algo=locon"', preset("diag-oft", "bypass_mode = true"), flags
    )
    assert "DBS402" not in codes(outcome) and "rotates" in messages(outcome, "DBS403"), errors(outcome)
    (tmp_path / "bf16").mkdir()  # without --fp8_base the entry converts
    outcome = _convert(
        tmp_path / "bf16", family, '"algo=locon"', preset("diag-oft"), "--mixed_precision bf16"
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_full_entries_stop_kohya_where_the_denoiser_is_cast_as_loaded(tmp_path, family):
    """Flux / SD3: --fp8_base (and --fp8_base_unet) cast the denoiser before the network is built, and
    FullModule.apply_to adds the float8 weight into its copy: DBS402. On SD the same entry converts
    (tests/unit/test_convert_kohya_refusals_audit.py CONVERTS full_entry_fp8_base)."""
    preset = _flux("full") if family == "flux" else _sd3("full")
    for flags in ("--fp8_base", "--fp8_base_unet"):
        where = tmp_path / flags.strip("-")
        where.mkdir()
        outcome = _convert(where, family, '"algo=locon"', preset, f"{flags} --mixed_precision bf16")
        found = messages(outcome, "DBS402")
        assert "algo = 'full'" in found and "full.py line 112" in found, errors(outcome)
    (tmp_path / "bf16").mkdir()
    outcome = _convert(tmp_path / "bf16", family, '"algo=locon"', preset, "--mixed_precision bf16")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)


T5_ATTENTION = _flux("locon", clip='"T5Attention"') + '[module_algo_map.T5Attention]\nalgo = "full"\n'
# T5's gated MLPs (their `wo` called, its weight never read, under prepare_text_encoder_fp8's forward)
T5_OTHER = _flux("locon", clip='"T5DenseGatedActDense"')
T5_OTHER += '[module_algo_map.T5DenseGatedActDense]\nalgo = "full"\n'


@pytest.mark.parametrize(
    ("flags", "stops"),
    [
        ("--fp8_base", True),
        ("--fp8_base_unet", False),  # kohya leaves T5-XXL in the mixed dtype: no fp8 preparation
        ("--fp8_base --network_train_unet_only", False),  # apply_to drops T5's modules: the weight stays
        ("--fp8_base --cache_text_encoder_outputs", False),  # T5 waits on the CPU, which the cast skips
    ],
)
def test_full_module_on_t5s_first_query_stops_kohya_with_fp8_base(tmp_path, flags, stops):
    """A FullModule on T5-XXL's block 0 query with --fp8_base: DBS402 (was dbspec's DBS403); without the
    read, no DBS402 (dbspec's own refusal of a quantised T5's full blocks, or a conversion)."""
    outcome = _convert(tmp_path, "flux", '"algo=locon"', T5_ATTENTION, f"{flags} --mixed_precision bf16")
    found = messages(outcome, "DBS402")
    if stops:
        assert "encoder.block.0.layer.0.SelfAttention.q" in found and "get_t5xxl_actual_dtype" in found, (
            errors(outcome)
        )
    else:
        assert "DBS402" not in codes(outcome), errors(outcome)


def test_full_modules_elsewhere_on_t5_stay_dbspecs_refusal(tmp_path):
    """T5's other Linears full with --fp8_base: kohya runs; dbspec casts T5-XXL's full layers (DBS403)."""
    outcome = _convert(tmp_path, "flux", '"algo=locon"', T5_OTHER, "--fp8_base --mixed_precision bf16")
    assert "DBS402" not in codes(outcome) and "DBS403" in codes(outcome), errors(outcome)
    (tmp_path / "sd3").mkdir()
    sd3 = _sd3("locon", clip='"T5Attention"') + '[module_algo_map.T5Attention]\nalgo = "full"\n'
    outcome = _convert(tmp_path / "sd3", "sd3", '"algo=locon"', sd3, "--fp8_base --mixed_precision bf16")
    assert "encoder.block.0.layer.0.SelfAttention.q" in messages(outcome, "DBS402"), errors(outcome)


def test_a_files_full_module_on_t5s_first_query_stops_kohya_with_fp8_base(tmp_path):
    """--dim_from_weights: the file's `diff` there (beside a LoKr module of the denoiser) is DBS402 with
    --fp8_base, converts with --fp8_base_unet."""
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    shapes = {
        "lora_unet_double_blocks_0_img_attn_proj.lokr_w1": (4, 4),
        "lora_unet_double_blocks_0_img_attn_proj.lokr_w2": (768, 768),
        "lora_te2_encoder_block_0_layer_0_SelfAttention_q.diff": (4096, 4096),
    }
    tensors = {k: np.zeros(s, np.float16) for k, s in shapes.items()}
    for name in {k.rsplit(".", 1)[0] for k in shapes}:
        tensors[f"{name}.alpha"] = np.array(1.0, np.float32)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = kohya(tmp_path, allow=True, command=f"{FLUX} --fp8_base --mixed_precision bf16")
    found = messages(outcome, "DBS402")
    assert "prev.safetensors" in found and "encoder.block.0.layer.0.SelfAttention.q" in found, errors(outcome)
    outcome = kohya(tmp_path, allow=True, command=f"{FLUX} --fp8_base_unet --mixed_precision bf16")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.t5_targets
