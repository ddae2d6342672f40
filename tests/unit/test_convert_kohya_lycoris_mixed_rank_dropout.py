"""lycoris.kohya's rank_dropout beside a preset file's entries of other algorithms on SD 1.x (issue 12): a
LoCon network's LoHa entries, decomposed or not, draw their own row masks as LohaModule does (was DBS403, a
spec's DBS578 / DBS583; tests/runtime/test_lycoris_mixed_rank_dropout.py holds it to lycoris-lora 4.1.3);
LoKr entries' LokrModules multiply the GPU weight by a CPU mask, so kohya stops (DBS402); a LoHa network's
LoCon entries draw LoConModule's (was DBS403: the plan's rank_dropout_form "lycoris" on the LoHa adapter;
test_convert_kohya_loha_locon_rank_dropout.py, tests/runtime/test_lycoris_loha_locon_rank_dropout.py)."""

from __future__ import annotations

from convert_kit import SD15, codes, errors, images, kohya, plan_of

PRESET = """\
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
text_encoder_target_module = []
[module_algo_map.ResnetBlock2D]
algo = "{algo}"
weight_decompose = true
"""


def _convert(tmp_path, algo: str, entry: str, args: str = ""):
    (tmp_path / "p.toml").write_text(PRESET.format(algo=entry), encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    return kohya(
        tmp_path,
        allow=True,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        f'--network_args "algo={algo}" "preset=p.toml" "rank_dropout=0.25" {args} '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out",
    )


def test_locon_networks_rank_dropout_beside_decomposed_loha_entries(tmp_path):
    outcome = _convert(tmp_path, "locon", "loha", '"module_dropout=0.1"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"]).adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.module_dropout) == ("lora", 0.25, "lycoris", 0.1)
    assert {(b.kind, b.dora) for b in a.blocks} == {("loha", "on")}


def test_lokr_entries_with_rank_dropout_stop_kohya(tmp_path):
    outcome = _convert(tmp_path, "locon", "lokr")
    assert "DBS402" in codes(outcome) and "LyCORIS issue #291" in errors(outcome)[0]


def test_a_loha_networks_decomposed_locon_entries_with_rank_dropout(tmp_path):
    outcome = _convert(tmp_path, "loha", "locon")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-sd1"]).adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form) == ("loha", 0.25, "lycoris")
    assert {(b.kind, b.dora) for b in a.blocks} == {("lora", "on")}
