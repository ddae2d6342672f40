"""LyCORIS LoCon's `rank_dropout` and `module_dropout` (lycoris.kohya `algo=lora`/`locon`): realistic kohya
command lines convert without --allow-unsupported, pass `dbspec check` and plan LyCORIS's rules
(adapter.rank_dropout_form "lycoris", in bypass_mode "lycoris_bypass"; runtime/lora_dropout.py, checked
against lycoris-lora's LoConModule in tests/runtime/test_locon_rank_dropout.py). With dora_wd LyCORIS
renormalises the masked update: the same draws inside LyCORIS's weight decomposition (was DBS403;
tests/runtime/test_lycoris_locon_dora_dropout.py)."""

from __future__ import annotations

import pytest
from convert_kit import SD15, SDXL, codes, expressible, fate, images, kohya, messages, plan_of

from dbspec.plan.summary import adapter_rows


def _convert(tmp_path, args: str, model: str = SD15, script: str = "train_network.py"):
    images(tmp_path / "img" / "10_ohwx dog", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch --num_cpu_threads_per_process 1 {script} "
        f"--pretrained_model_name_or_path={model} --train_data_dir=img --resolution=512 "
        "--output_dir=out --output_name=dog --network_module=lycoris.kohya --network_dim=16 "
        f"--network_alpha=8 --network_args {args} --learning_rate=1e-4 --max_train_steps=400 "
        "--optimizer_type=AdamW --mixed_precision=fp16 --save_model_as=safetensors",
    )


@pytest.mark.parametrize("algo", ["locon", "lora"])
def test_locon_rank_and_module_dropout(tmp_path, algo):
    args = f'"algo={algo}" "conv_dim=8" "conv_alpha=4" "rank_dropout=0.25" "module_dropout=0.1"'
    outcome = expressible(_convert(tmp_path, args))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank_dropout, a.module_dropout) == ("lora", 0.25, 0.1)
    assert a.rank_dropout_form == "lycoris" and a.down_dropout == 0.0
    assert fate(outcome, "network_args") == "mapped"


def test_locon_rank_dropout_in_bypass_mode_masks_ranks(tmp_path):
    outcome = expressible(_convert(tmp_path, '"algo=locon" "rank_dropout=0.3" "bypass_mode=True"'))
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank_dropout, a.rank_dropout_form) == (0.3, "lycoris_bypass")
    assert "LyCORIS LoCon bypass: ranks, unscaled" in dict(adapter_rows(a))["  dropout"]


def test_locon_rank_dropout_with_tucker_and_scalar(tmp_path):
    args = '"algo=locon" "conv_dim=4" "use_tucker=True" "use_scalar=True" "rank_dropout=0.2"'
    a = plan_of(expressible(_convert(tmp_path, args)), tmp_path).adapter
    assert a.tucker and a.scalar and (a.rank_dropout, a.rank_dropout_form) == (0.2, "lycoris")


def test_locon_rank_dropout_sdxl(tmp_path):
    outcome = _convert(tmp_path, '"algo=locon" "rank_dropout=0.1"', SDXL, "sdxl_train_network.py")
    a = plan_of(expressible(outcome), tmp_path).adapter
    assert (a.rank_dropout, a.rank_dropout_form) == (0.1, "lycoris")


def test_zero_rates_change_nothing(tmp_path):
    a = plan_of(
        expressible(_convert(tmp_path, '"algo=locon" "rank_dropout=0" "module_dropout=0.0"')), tmp_path
    )
    assert (a.adapter.rank_dropout, a.adapter.module_dropout, a.adapter.rank_dropout_form) == (0, 0, "kohya")


@pytest.mark.parametrize(
    ("args", "model", "script"),
    [
        ('"algo=locon" "dora_wd=True" "rank_dropout=0.1" "module_dropout=0.2"', SD15, "train_network.py"),
        (
            '"algo=lora" "conv_dim=4" "use_tucker=True" "dora_wd=True" "wd_on_output=False" '
            '"rank_dropout=0.1" "module_dropout=0.2"',
            SDXL,
            "sdxl_train_network.py",
        ),
    ],
)
def test_locon_dropouts_with_dora_are_lycoris_decomposition_s(tmp_path, args, model, script):
    """LoConModule with weight_decompose draws module_dropout, then masks ΔW's output rows before
    renormalising W + ΔW (was DBS403): LyCORIS's form of DoRA with the LyCORIS row mask."""
    outcome = expressible(_convert(tmp_path, args, model, script))
    assert "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_form, a.rank_dropout, a.module_dropout) == (True, "lycoris", 0.1, 0.2)
    assert a.rank_dropout_form == "lycoris"


@pytest.mark.parametrize("given", ["--network_dropout=0.15", '"dropout=0.15"'])
def test_locon_bypass_dropout_drops_the_update(tmp_path, given):
    """LoConModule.bypass_forward_diff: torch's dropout of the scaled update (after the rank mask), from
    --network_dropout or network_args `dropout` (runtime/lora_dropout.py, checked against LoConModule in
    tests/runtime/test_locon_rank_dropout.py)."""
    args = '"algo=locon" "conv_dim=4" "bypass_mode=True" "rank_dropout=0.2"'
    if given.startswith('"'):
        args += f" {given}"
    outcome = _convert(tmp_path, args, script=f"train_network.py {given if given.startswith('--') else ''}")
    a = plan_of(expressible(outcome), tmp_path).adapter
    assert (a.output_dropout, a.dropout, a.down_dropout) == (0.15, 0.0, 0.0)
    assert (a.rank_dropout, a.rank_dropout_form) == (0.2, "lycoris_bypass")
    assert fate(outcome, "network_args") == "mapped"
    if given.startswith("--"):
        assert fate(outcome, "network_dropout") == "mapped"


def test_locon_bypass_dropout_outside_torch_range_is_invalid(tmp_path):
    outcome = _convert(tmp_path, '"algo=locon" "bypass_mode=True" "dropout=1.5"')
    assert "DBS402" in codes(outcome) and "ValueError" in messages(outcome, "DBS402")
