"""lycoris.kohya algo=tlora with `train_norm` (issue 12; was DBS403 on SD, and on Flux a converter crash where
the preset file reached CLIP's LayerNorms: it wrote `text_encoder_norms` into a tlora adapter that had none):
the norms LyCORIS gives NormModules are the T-LoRA adapter's norm offsets (`denoiser_norms` /
`text_encoder_norms`), and the network's `rank_dropout`, which TLoraModule never reads, is theirs
(`norm_rank_dropout`), beside a preset file's entries the adapter's `rank_dropout` too, as on a DyLoRA
network (tests/runtime/test_lycoris_flow_tlora_norms.py holds CLIP-L's offsets to lycoris-lora's
NormModules)."""

from __future__ import annotations

from convert_kit import errors, flux_lycoris, plan_of
from test_convert_kohya_tlora import _lycoris
from test_convert_lycoris_flow_mixed_rank_dropout import BASE, PRESET


def test_flux_tlora_network_train_norm_takes_norm_offsets(tmp_path):
    preset = PRESET.replace('["CLIPAttention"]', '["CLIPEncoderLayer"]').replace("OTHER", "locon")
    for extra, rates in (("", (0.0, 0.0)), (' "rank_dropout=0.25"', (0.25, 0.25))):
        folder = tmp_path / str(len(extra))
        folder.mkdir()
        (folder / "mixed.toml").write_text(preset, encoding="utf-8")
        outcome = flux_lycoris(folder, f'"algo=tlora" "preset=mixed.toml" "train_norm=True"{extra}')
        a = plan_of(outcome, folder, BASE).adapter
        assert (a.kind, a.rank_dropout, a.norm_rank_dropout) == ("tlora", *rates), extra
        assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and a.fused


def test_sd_tlora_network_train_norm_takes_norm_offsets(tmp_path):
    """attn-mlp reaches the U-Net transformers' norms: the denoiser's offsets; the network's rank_dropout
    (no entries) the offsets' alone."""
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=attn-mlp", "train_norm=True", "rank_dropout=0.1"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout) == ("tlora", 0.0, 0.1)
    assert a.denoiser_norms and not a.text_encoder_norms
