"""kohya --dim_from_weights on a file some of whose modules hold `alpha` 0: networks/lora.py's LoRAModule and
lycoris-lora 4.1.3's LoConModule (make_module_from_state_dict) read alpha 0 as the rank (`alpha is None or
alpha == 0: alpha = lora_dim`, scale 1, fixed at build; load_weights then copies the file's 0 into the alpha
buffer, which the forward never reads): those modules' blocks carry alpha = rank (issue 12)."""

from __future__ import annotations

from convert_kit import codes, errors, plan_of  # noqa: F401

from tests.unit.test_convert_kohya_dylora import CONV, OUT, Q, TE, TE_FC, _from_file, _matches

MODULES = {
    Q: (8, 0.0, 320, 0),  # alpha 0: scale 1
    OUT: (4, 2.0, 320, 0),
    CONV: (4, 0.0, 320, 3),  # a 3x3 convolution at alpha 0: conv_alpha = its rank
    TE: (8, 0.0, 768, 0),
    TE_FC: (2, 1.0, 768, 0),
}


def _scales(a) -> dict[str, float]:
    out = {name: _matches(a.blocks, name) for name in (Q, OUT)}
    scales = {name: b.alpha / b.rank for name, b in out.items()}
    conv = _matches(a.blocks, CONV)
    scales[CONV] = conv.conv_alpha / conv.conv_rank
    text = {b.rank: b.alpha / b.rank for b in a.text_encoder_blocks if b.rank}
    scales[TE], scales[TE_FC] = text[8], text[2]
    return scales


def test_alpha_zero_is_scale_one_for_networks_lora(tmp_path):
    outcome = _from_file(tmp_path, MODULES, "networks.lora", '"conv_dim=4"', "dim_from_weights = true")
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert _scales(a) == {Q: 1.0, OUT: 0.5, CONV: 1.0, TE: 1.0, TE_FC: 0.5}


def test_alpha_zero_is_scale_one_for_lycoris(tmp_path):
    outcome = _from_file(tmp_path, MODULES, "lycoris.kohya", '"algo=locon"', "dim_from_weights = true")
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert _scales(a) == {Q: 1.0, OUT: 0.5, CONV: 1.0, TE: 1.0, TE_FC: 0.5}
