"""lycoris.kohya's network `rank_dropout` beside a preset file's entries with their own `bypass_mode` (issue
12; was DBS403 on Flux / SD3 / Chroma, a spec's DBS578): such an entry is Diag-OFT, BOFT, DyLoRA or IA^3
(the kinds a block's own `bypass` exists for), whose bypass forwards in lycoris-lora 4.1.3 never draw a rank
mask, so it reads none of the rate; the other entries draw it as before (the adapter's `rank_dropout`).
tests/runtime/test_lycoris_flow_rank_dropout_layers.py holds the fused layers to lycoris-lora's modules."""

from __future__ import annotations

from convert_kit import SD15, codes, errors, flux_lycoris, images, kohya, messages, plan_of

BYPASS = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "OWN"
dim = 4
bypass_mode = true
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
"""
BASE = ["model.base=builtin:tiny-flux", "model.text_encoder_files=[]", 'model.vae=""']


def _flux(tmp_path, algo: str, own: str, extra: str = ""):
    (tmp_path / "p.toml").write_text(BYPASS.replace("OWN", own), encoding="utf-8")
    outcome = flux_lycoris(tmp_path, f'"algo={algo}" "preset=p.toml" "rank_dropout=0.25" {extra}')
    return outcome, plan_of(outcome, tmp_path, BASE).adapter


def test_entries_own_bypass_mode_beside_rank_dropout_on_flux(tmp_path):
    """GLoRA, DyLoRA and LoHa networks: the Diag-OFT / IA^3 entry in its own bypass_mode draws none, the LoHa
    entry LohaModule's row mask (the adapter's rank_dropout)."""
    for algo, own, extra in (
        ("glora", "diag-oft", ""),
        ("dylora", "diag-oft", '"block_size=2"'),
        ("glora", "ia3", ""),
        ("loha", "diag-oft", ""),
    ):
        folder = tmp_path / f"{algo}-{own}"
        folder.mkdir()
        _, a = _flux(folder, algo, own, extra)
        assert (a.kind, a.rank_dropout) == (algo, 0.25) and a.fused, (algo, own)
        assert [(b.kind, b.bypass) for b in a.blocks if b.kind == own] == [(own, True)], (algo, own)


def test_a_dylora_networks_own_bypass_entries_read_no_rank_dropout(tmp_path):
    """A DyLoRA network whose only entries are its own algorithm's in their own bypass_mode: nothing draws the
    rate (DyLoraModule never reads it), ignored (DBS405; was DBS403 on Flux, an inert rank_dropout on SD)."""
    text = BYPASS.split('[name_algo_map."single_blocks')[0]
    (tmp_path / "p.toml").write_text(text.replace("OWN", "dylora"), encoding="utf-8")
    outcome = flux_lycoris(tmp_path, '"algo=dylora" "preset=p.toml" "rank_dropout=0.25" "block_size=4"')
    assert "rank_dropout" in messages(outcome, "DBS405"), errors(outcome)
    assert plan_of(outcome, tmp_path, BASE).adapter.rank_dropout == 0.0


def test_a_refused_whole_layer_network_keeps_no_rank_with_allow_unsupported(tmp_path):
    """SD 1.x: a full network whose LoCon entry has its own bypass_mode with rank_dropout (LoConModule's
    bypass rank mask: DBS403) rendered with --allow-unsupported: no rank / alpha on the full adapter (the
    converter raised ValueError: unknown keys)."""
    preset = 'unet_target_module = ["Transformer2DModel"]\ntext_encoder_target_module = []\n'
    preset += '[module_algo_map.FeedForward]\nalgo = "locon"\ndim = 8\nbypass_mode = true\n'
    (tmp_path / "p.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        allow=True,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=512 --network_module=lycoris.kohya --network_dim=16 "
        '--network_alpha=8 --network_args "algo=full" "preset=p.toml" "rank_dropout=0.1" '
        "--learning_rate=1e-4 --max_train_steps=200 --save_model_as=safetensors",
    )
    assert "DBS403" in codes(outcome) and "bypass_mode" in messages(outcome, "DBS403")
