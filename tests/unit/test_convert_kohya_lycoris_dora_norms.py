"""LyCORIS's weight decomposition (issue 12) where it was still refused: a preset entry's own
`weight_decompose` beside `--scale_weight_norms` on Tucker layers (SD 1.x) and on Flux / SD3's fused Linears
(was DBS403, a spec's DBS583 / DBS579), and what LoKr's / LoHa's `dropout` does with `dora_wd` per input
column (`wd_on_output=False`). lycoris-lora 4.1.3's LoConModule / LohaModule / LokrModule.apply_max_norm take
the update before the decomposition, their Tucker form's whole update, a fused Linear one module
(tests/runtime/test_lycoris_block_dora_max_norm.py holds dbspec's runtime to them); LokrModule / LohaModule
read `dropout` in their bypass forward alone, which with dora_wd is DBS402, and their decomposed forward
never reads it: ignored (DBS405), the plan without an output dropout."""

from __future__ import annotations

import pytest
from convert_kit import codes, errors, expressible, fate, plan_of
from test_convert_kohya_lycoris_dora import _convert as _convert_sd
from test_convert_kohya_lycoris_entry_opts import FULL
from test_convert_kohya_lycoris_entry_opts import _convert as _convert_preset
from test_convert_lycoris_flow_preset_file import MIXED, SD3_X_ATTENTION_MIXED, _flux, _sd3

RESNETS = "[module_algo_map.ResnetBlock2D]\nweight_decompose = true\n"


@pytest.mark.parametrize(
    ("algo", "text", "args", "tucker", "block_tucker"),
    [
        ("locon", FULL + RESNETS, '"use_tucker=True"', True, "adapter"),  # the network's Tucker form
        ("loha", FULL + RESNETS, '"use_tucker=True"', True, "adapter"),
        ("locon", FULL + RESNETS + "use_tucker = true\n", "", False, "on"),  # the entry's own
    ],
)
def test_entry_weight_decompose_on_tucker_layers_with_max_norm(
    tmp_path, algo, text, args, tucker, block_tucker
):
    """The ResNets' entry decomposes its k x k convolutions in their Tucker form (the network's use_tucker,
    or the entry's own) beside --scale_weight_norms: LyCORIS's max norm (was DBS403, a spec's DBS583 /
    DBS579)."""
    outcome = expressible(_convert_preset(tmp_path, text, algo, f"{args} --scale_weight_norms=1.0"))
    assert fate(outcome, "scale_weight_norms") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.tucker, a.dora, a.max_norm, a.max_norm_form) == (
        {"locon": "lora"}.get(algo, algo),
        tucker,
        False,
        1.0,
        "lycoris",
    )
    assert [(b.dora, b.tucker) for b in a.blocks] == [("on", block_tucker)]
    assert "ResnetBlock" not in a.blocks[0].pattern and "conv1" in a.blocks[0].pattern


@pytest.mark.parametrize("axis", ["output", "input"])
def test_flux_entries_own_weight_decompose_with_max_norm(tmp_path, axis):
    """LoKr (image q/k/v) and LoHa (linear1) entries of a LoCon network decomposing their fused Linears by
    their own weight_decompose (and wd_on_out = false) beside --scale_weight_norms (was DBS403, a spec's
    DBS583): LyCORIS's max norm, each fused Linear one module."""
    own = "weight_decompose = true\n" + ("wd_on_out = false\n" if axis == "input" else "")
    preset = MIXED.replace("dim = 8\n", f"dim = 8\n{own}").replace("dim = 2\n", f"dim = 2\n{own}")
    outcome = _flux(tmp_path, preset, '"algo=locon" --scale_weight_norms 1.0')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.fused and (a.kind, a.dora, a.dora_form, a.max_norm, a.max_norm_form) == (
        "lora",
        False,
        "lycoris",
        1.0,
        "lycoris",
    )
    want = "input" if axis == "input" else "adapter"
    assert [(b.kind, b.dora, b.dora_axis) for b in a.blocks] == [("lokr", "on", want), ("loha", "on", want)]


def test_sd3_entry_own_weight_decompose_with_max_norm(tmp_path):
    """SD3: a LoHa entry's own weight_decompose on the x blocks' fused q/k/v of a LoKr network beside
    --scale_weight_norms (was DBS403, a spec's DBS583)."""
    preset = SD3_X_ATTENTION_MIXED + "weight_decompose = true\n"
    outcome = _sd3(tmp_path, preset, '"algo=lokr" --scale_weight_norms 1.0')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.fused and (a.kind, a.dora, a.max_norm, a.max_norm_form) == ("lokr", False, 1.0, "lycoris")
    assert [(b.kind, b.dora) for b in a.blocks] == [("loha", "on")]


@pytest.mark.parametrize("algo", ["lokr", "loha"])
@pytest.mark.parametrize("given", ["network_args", "network_dropout"])
def test_column_dora_dropout_is_never_read(tmp_path, algo, given):
    """LoKr / LoHa with dora_wd per input column and a dropout (network_args', or --network_dropout, which
    train_network.py hands on): LokrModule / LohaModule decompose in their rebuilt-weight forward, which never
    reads it, so it is ignored (DBS405) and the plan has no output dropout; with bypass_mode dora_wd is
    DBS402 (their bypass forward never decomposes)."""
    args = f'"algo={algo}", "dora_wd=True", "wd_on_output=False"'
    args += ', "dropout=0.1"' if given == "network_args" else ""
    extra = "network_dropout = 0.1\n" if given == "network_dropout" else ""
    (tmp_path / "sd").mkdir()
    outcome = _convert_sd(tmp_path / "sd", args, extra=extra)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_args dropout" if given == "network_args" else "network_dropout") in (
        "ignored",
        "inert",
    )
    a = plan_of(outcome, tmp_path / "sd").adapter
    assert (a.kind, a.dora, a.dora_axis, a.output_dropout) == (algo, True, "input", 0.0)
    (tmp_path / "bypass").mkdir()
    outcome = _convert_sd(tmp_path / "bypass", args + ', "bypass_mode=True"', extra=extra)
    assert fate(outcome, "network_args dora_wd") == "invalid" and "DBS402" in codes(outcome)
    # Flux's fused Linears alike
    flux_args = args.replace(", ", " ") + (" --network_dropout 0.1" if given == "network_dropout" else "")
    (tmp_path / "flux").mkdir()
    outcome = _flux(tmp_path / "flux", MIXED.split("\n[")[0] + "\n", flux_args)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "flux").adapter
    assert a.fused and (a.kind, a.dora, a.dora_axis, a.output_dropout) == (algo, True, "input", 0.0)


def test_sd3_dim_from_weights_file_with_own_dora_scale_and_max_norm(tmp_path):
    """--dim_from_weights with --scale_weight_norms on SD3 (was DBS403, a spec's DBS583): a file of LoKr
    modules whose LoCon patch convolution carries its own `dora_scale`, and a LoHa file whose fused q/k/v
    LoCon module does: each module's block `dora = "on"` beside LyCORIS's max norm."""
    from test_convert_lycoris_flow_dim_from_weights import _factor_file, _loha
    from test_convert_lycoris_flow_dim_from_weights import _sd3 as _sd3_file

    w, patch, qkv = 2432, "lora_unet_x_embedder_proj", "lora_unet_joint_blocks_0_x_block_attn_qkv"
    lokr = {"lokr_w1_a": (8, 2), "lokr_w1_b": (2, 8), "lokr_w2_a": (3 * w // 8, 2), "lokr_w2_b": (2, w // 8)}
    locon = {"lora_down.weight": (2, 16, 2, 2), "lora_up.weight": (w, 2, 1, 1), "dora_scale": (w, 1, 1, 1)}
    fused = {"lora_down.weight": (4, w), "lora_up.weight": (3 * w, 4), "dora_scale": (3 * w, 1)}
    files = {
        "lokr": {qkv: lokr, patch: locon},
        "loha": {qkv: fused, "lora_unet_joint_blocks_0_x_block_attn_proj": _loha(w, w, 2)},
    }
    for kind, modules in files.items():
        (folder := tmp_path / kind).mkdir()
        _factor_file(folder / "prev.safetensors", modules, 2.0)
        outcome = _sd3_file(folder, "--scale_weight_norms 1.0")
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, folder).adapter
        assert (a.kind, a.max_norm, a.max_norm_form) == (kind, 1.0, "lycoris")
        assert [(b.kind, b.dora) for b in a.blocks] == [("lora", "on")]
