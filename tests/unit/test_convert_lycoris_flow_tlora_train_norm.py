"""lycoris.kohya algo=tlora with `train_norm` on kohya's Flux, its preset file reaching CLIP-L's LayerNorms:
LyCORIS gives those norms NormModules beside the TLoraModules, but dbspec's T-LoRA adapter holds no norm
offsets (no `text_encoder_norms` / `denoiser_norms` / `norm_rank_dropout`), so it is DBS403 as on SD, with
or without the network's rank_dropout (which TLoraModule never reads and the NormModules would draw); the
converter wrote `text_encoder_norms` into the tlora adapter and crashed rendering the spec."""

from __future__ import annotations

from convert_kit import FLUX_LYCORIS, codes, component_file, images, kohya, messages
from test_convert_lycoris_flow_mixed_rank_dropout import PRESET


def test_tlora_network_train_norm_is_refused_not_a_crash(tmp_path):
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    preset = PRESET.replace('["CLIPAttention"]', '["CLIPEncoderLayer"]').replace("OTHER", "locon")
    (tmp_path / "mixed.toml").write_text(preset, encoding="utf-8")
    for extra in ("", ' "rank_dropout=0.25"'):
        args = f'"algo=tlora" "preset=mixed.toml" "train_norm=True"{extra}'
        outcome = kohya(tmp_path, command=f"{FLUX_LYCORIS}--network_args {args}")
        assert "DBS403" in codes(outcome), extra
        said = messages(outcome, "DBS403")
        assert "train_norm" in said and "no norm offsets" in said, said
