"""kohya's --fp8_base with LyCORIS modules that read or take the layer's own weight (issue 12;
dbspec/convert/kohya/lycoris_fp8.py): lycoris-lora 4.1.3's modules on float8_e4m3fn weights in the order
kohya's scripts cast them (on the CPU: torch implements no float8 add / mul there either), and the
conversions that follow. In the default forward every module but FullModule and GLoRAModule computes with the
float8 weight and stops kohya; in bypass_mode they read the layer's output and run. SD 1.x/2.x and SDXL cast
after apply_to, so FullModule's layers stay float (their full entries beside a network in bypass_mode convert:
tests/runtime/test_lycoris_full_fp8_base.py); Flux / SD3 / Chroma cast as they load, so FullModule.apply_to
stops kohya; and prepare_text_encoder_fp8 reads T5-XXL's first query weight, which a FullModule there has
deleted."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from convert_kit import codes, component_file, errors, images, kohya, messages
from safetensors.numpy import save_file
from test_convert_kohya_refusals_audit import _convert, _flux, _sd
from test_convert_lycoris_flow_file_t5_full_output import FLUX

from dbspec.convert.kohya.lycoris_fp8 import _FORWARD_STOPS

FP8 = torch.float8_e4m3fn
FLAGS = "--fp8_base --mixed_precision bf16"
# the network's layers in bypass_mode (LyCORIS's default forward stops kohya on float8 weights), its full
# entries in FullModule's one forward (bypass_mode=True raises there)
BYPASS = '"algo=locon" "bypass_mode=True"'
OWN = "bypass_mode = false"
SD3_PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv"]
text_encoder_target_module = [{clip}]
[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "{algo}"
{extra}
"""
CLASSES = {
    "lora": "locon.LoConModule",
    "loha": "loha.LohaModule",
    "lokr": "lokr.LokrModule",
    "dylora": "dylora.DyLoraModule",
    "ia3": "ia3.IA3Module",
    "boft": "boft.ButterflyOFTModule",
    "diag-oft": "diag_oft.DiagOFTModule",
    "tlora": "tlora.TLoraModule",
    "glora": "glora.GLoRAModule",
}


def _sd3(algo: str, extra: str = "", clip: str = "") -> str:
    return SD3_PRESET.format(algo=algo, extra=extra, clip=clip)


def _autocast_forward(module, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return module(x)


def test_lycoris_default_forwards_on_float8_weights_stop_kohya():
    """Built and applied on the float layer, the layer then cast (train_network.py's order): each module's
    default forward raises at the line lycoris_fp8 names (GLoRAModule's runs), its bypass forward runs."""
    pytest.importorskip("lycoris.modules.locon")
    x = torch.randn(2, 8)
    for algo, where in CLASSES.items():
        module_name, name = where.split(".")
        cls = getattr(importlib.import_module(f"lycoris.modules.{module_name}"), name)
        for bypass in (None, True):
            torch.manual_seed(0)
            layer = torch.nn.Linear(8, 16)
            module = cls("m", layer, 1.0, 4, 1, bypass_mode=bypass)
            module.apply_to()
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
            layer.to(FP8)
            if bypass or algo == "glora":
                _autocast_forward(module, x)
                continue
            with pytest.raises((NotImplementedError, RuntimeError), match="Float8") as caught:
                _autocast_forward(module, x)
            frame = caught.traceback[-1]
            file, line = _FORWARD_STOPS[algo][0].split(" line ")
            assert (frame.path.name, frame.lineno + 1) == (file, int(line)), (algo, frame)


def test_full_module_on_float8_weights_in_kohyas_two_orders():
    """Cast before the network is built (flux_train_network.py's order): apply_to raises. Applied first
    (train_network.py's), the layer holds no weight for the cast and the module computes with its float
    copy."""
    full = pytest.importorskip("lycoris.modules.full")
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    module = full.FullModule("full", torch.nn.Linear(8, 16).to(FP8), 1.0)
    with pytest.raises(NotImplementedError, match="Float8_e4m3fn") as caught:
        module.apply_to()
    assert (caught.traceback[-1].path.name, caught.traceback[-1].lineno + 1) == ("full.py", 112)
    layer = torch.nn.Linear(8, 16)
    weight = layer.weight.detach().clone()
    module = full.FullModule("full", layer, 1.0)
    module.apply_to()
    layer.to(FP8)
    assert not hasattr(layer, "weight") and torch.equal(module.weight, weight)
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
def test_layers_in_the_default_forward_stop_kohya_with_fp8_base(tmp_path, family):
    """DBS402 naming the entry (its layers reported first) and the line, and the network's own LoCon layers
    alike; in bypass_mode a Diag-OFT entry runs in kohya and converts on SD (its bypass forward reads the
    layer's output: tests/runtime/test_lycoris_bypass_fp8_base.py), on Flux's fused Linears stays dbspec's
    refusal (DBS403); without --fp8_base the entry converts."""
    preset = _sd if family == "sd" else _flux
    entry = "module_algo_map.FeedForward" if family == "sd" else "name_algo_map.double_blocks.*.img_attn.qkv"
    outcome = _convert(tmp_path, family, '"algo=locon"', preset("diag-oft"), FLAGS)
    found = messages(outcome, "DBS402")
    assert entry in found and "diag_oft.py line 247" in found, errors(outcome)
    (tmp_path / "locon").mkdir()
    outcome = _convert(tmp_path / "locon", family, '"algo=locon"', preset("locon", "dim = 8"), FLAGS)
    assert "locon.py line 338" in messages(outcome, "DBS402"), errors(outcome)
    (tmp_path / "bypass").mkdir()
    outcome = _convert(tmp_path / "bypass", family, BYPASS, preset("diag-oft"), FLAGS)
    if family == "sd":
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    else:
        assert "DBS402" not in codes(outcome) and "rotates" in messages(outcome, "DBS403"), errors(outcome)
    (tmp_path / "bf16").mkdir()
    outcome = _convert(
        tmp_path / "bf16", family, '"algo=locon"', preset("diag-oft"), "--mixed_precision bf16"
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)


def test_full_entries_own_false_bypass_mode_beside_a_bypass_network_is_inert(tmp_path):
    """FullModule has one forward (bypass_mode=True raises, DBS402): an entry's false bypass_mode beside the
    network's changes nothing (was DBS403)."""
    outcome = _convert(tmp_path, "sd", BYPASS, _sd("full", OWN), "--mixed_precision bf16")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert "FullModule has one forward" in messages(outcome, "DBS405")


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_full_entries_stop_kohya_where_the_denoiser_is_cast_as_loaded(tmp_path, family):
    """Flux / SD3: --fp8_base (and --fp8_base_unet) cast the denoiser before the network is built, and
    FullModule.apply_to adds the float8 weight into its copy: DBS402. On SD the same entries convert
    (tests/unit/test_convert_kohya_refusals_audit.py CONVERTS full_entry_fp8_base_bypass_network)."""
    preset = _flux("full", OWN) if family == "flux" else _sd3("full", OWN)
    for flags in ("--fp8_base", "--fp8_base_unet"):
        where = tmp_path / flags.strip("-")
        where.mkdir()
        outcome = _convert(where, family, BYPASS, preset, f"{flags} --mixed_precision bf16")
        found = messages(outcome, "DBS402")
        assert "algo = 'full'" in found and "full.py line 112" in found, errors(outcome)
    (tmp_path / "bf16").mkdir()
    outcome = _convert(tmp_path / "bf16", family, BYPASS, preset, "--mixed_precision bf16")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)


T5_ATTENTION = _flux("locon", clip='"T5Attention"') + f'[module_algo_map.T5Attention]\nalgo = "full"\n{OWN}\n'
# T5's gated MLPs (their `wo` called, its weight never read, under prepare_text_encoder_fp8's forward)
T5_OTHER = _flux("locon", clip='"T5DenseGatedActDense"')
T5_OTHER += f'[module_algo_map.T5DenseGatedActDense]\nalgo = "full"\n{OWN}\n'


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
    outcome = _convert(tmp_path, "flux", BYPASS, T5_ATTENTION, f"{flags} --mixed_precision bf16")
    found = messages(outcome, "DBS402")
    if stops:
        assert "encoder.block.0.layer.0.SelfAttention.q" in found and "get_t5xxl_actual_dtype" in found, (
            errors(outcome)
        )
    else:
        assert "DBS402" not in codes(outcome), errors(outcome)


def test_full_modules_elsewhere_on_t5_stay_dbspecs_refusal(tmp_path):
    """T5's other Linears full with --fp8_base: kohya runs; dbspec casts T5-XXL's full layers (DBS403). SD3's
    T5-XXL (lora_te3_) is prepared as Flux's."""
    outcome = _convert(tmp_path, "flux", BYPASS, T5_OTHER, FLAGS)
    assert "DBS402" not in codes(outcome) and "DBS403" in codes(outcome), errors(outcome)
    (tmp_path / "sd3").mkdir()
    sd3 = _sd3("locon", clip='"T5Attention"') + f'[module_algo_map.T5Attention]\nalgo = "full"\n{OWN}\n'
    outcome = _convert(tmp_path / "sd3", "sd3", BYPASS, sd3, FLAGS)
    assert "encoder.block.0.layer.0.SelfAttention.q" in messages(outcome, "DBS402"), errors(outcome)


def test_a_files_full_module_on_t5s_first_query_stops_kohya_with_fp8_base(tmp_path):
    """--dim_from_weights: the file's `diff` there is DBS402 with --fp8_base (before the denoiser's LoKr
    module's first forward, which stops kohya too); without --fp8_base the file converts."""
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
    outcome = kohya(tmp_path, allow=True, command=f"{FLUX} {FLAGS}")
    found = messages(outcome, "DBS402")
    assert "prev.safetensors" in found and "encoder.block.0.layer.0.SelfAttention.q" in found, errors(outcome)
    outcome = kohya(tmp_path, allow=True, command=f"{FLUX} --mixed_precision bf16")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    # without it, the LoKr module's default forward (create_network_from_weights hands no bypass_mode)
    del tensors["lora_te2_encoder_block_0_layer_0_SelfAttention_q.diff"]
    del tensors["lora_te2_encoder_block_0_layer_0_SelfAttention_q.alpha"]
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = kohya(tmp_path, allow=True, command=f"{FLUX} {FLAGS}")
    found = messages(outcome, "DBS402")
    assert "prev.safetensors" in found and "lokr.py line 563" in found, errors(outcome)


@pytest.mark.parametrize(
    ("family", "args", "stops"),
    [
        ("sd", '"algo=locon"', "locon.py line 338"),
        ("sd", '"algo=diag-oft"', "diag_oft.py line 247"),
        ("sd", '"algo=lokr" "preset=attn-only"', "lokr.py line 563"),
        ("flux", '"algo=loha"', "loha.py line 317"),
        ("flux", '"algo=full"', "full.py line 112"),
        ("sd", '"algo=locon" "bypass_mode=True"', ""),
        ("flux", '"algo=lokr" "bypass_mode=True"', ""),
        ("sd", '"algo=glora"', ""),  # GLoRAModule reads the layer's output (DBS403: dbspec's own refusal)
    ],
)
def test_builtin_preset_networks_in_the_default_forward_stop_kohya_with_fp8_base(
    tmp_path, family, args, stops
):
    """A network from a built-in preset: all its denoiser modules of its algorithm, so the same stops."""
    outcome = _convert(tmp_path, family, args, None, FLAGS)
    if stops:
        found = messages(outcome, "DBS402")
        assert stops in found and "the algo=" in found, errors(outcome)
    else:
        assert "DBS402" not in codes(outcome), errors(outcome)
