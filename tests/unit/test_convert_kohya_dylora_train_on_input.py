"""A LyCORIS preset file's DyLoRA entry giving `train_on_input` (issue 12): lycoris-lora 4.1.3's DyLoraModule
names it in its signature and never uses it (IA3Module alone reads it), so it changes nothing: ignored
(DBS405, saying so) on SD 1.x/2.x / SDXL and Flux / SD3 / Chroma, the entry's block as without it. Was DBS403
(counted as an option DyLoRA reads that dbspec's blocks do not carry)."""

from __future__ import annotations

import pytest
from convert_kit import codes, empty_hub_cache, errors, plan_of  # noqa: F401
from test_convert_kohya_refusals_audit import PLAN_BASE, _convert, _flux, _sd

WHY = "DyLoraModule takes train_on_input (IA^3's switch) and never uses it"


@pytest.mark.parametrize(
    ("family", "algo", "preset", "entry"),
    [
        ("sd", "locon", _sd, "module_algo_map.FeedForward"),
        ("sd", "dylora", _sd, "module_algo_map.FeedForward"),
        ("flux", "locon", _flux, "name_algo_map.double_blocks.*.img_attn.qkv"),
    ],
)
@pytest.mark.parametrize("value", ["true", "false"])
def test_a_dylora_entrys_train_on_input_is_inert(tmp_path, family, algo, preset, entry, value):
    outcome = _convert(
        tmp_path / "on", family, f'"algo={algo}"', preset("dylora", f"train_on_input = {value}")
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    said = [d for d in outcome.diagnostics if d.code == "DBS405"]
    assert [(d.path, WHY in d.message) for d in said] == [
        (f"network_args preset {entry}.train_on_input", True)
    ]
    plain = _convert(tmp_path / "off", family, f'"algo={algo}"', preset("dylora"))
    with_it = plan_of(outcome, tmp_path / "on", PLAN_BASE[family]).adapter
    without = plan_of(plain, tmp_path / "off", PLAN_BASE[family]).adapter
    assert with_it == without  # the same adapter and blocks as without the key
