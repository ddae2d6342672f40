"""lycoris.kohya `--network_weights` saved at other alphas than the network's (issue 12): LyCORIS's
LoConModule, LohaModule and LokrModule fix their scale when the network is built and load_weights only fills
their `alpha` buffer, so LyCORIS trains the file's weights at the network's (a preset entry's) alpha. The
converted spec says so (`adapter.init_alpha = "ignore"`, on a run of several kinds and on LyCORIS's own
kinds), plans, and warns (DBS404) that kohya's saved file would carry the file's alphas; a file at the run's
alphas keeps the check. The load itself against lycoris-lora 4.1.3:
tests/runtime/test_lycoris_mixed_file.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from convert_kit import SD15, codes, empty_hub_cache, fate, images, kohya, messages, plan_of  # noqa: F401
from dbspec.plan.summary import adapter_rows
from test_init_weights import Q, TE

PRESET = """\
unet_target_module = ["Transformer2DModel"]
text_encoder_target_module = ["CLIPAttention"]
[module_algo_map.CLIPAttention]
algo = "locon"
"""


def _loha(width: int, rank: int) -> dict[str, tuple]:
    return {
        k: (width, rank) if k.endswith("_a") else (rank, width)
        for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    }


def _locon(width: int, rank: int) -> dict[str, tuple]:
    return {"lora_down.weight": (rank, width), "lora_up.weight": (width, rank)}


def _write(path: Path, modules: dict[str, tuple[dict[str, tuple], float]]) -> Path:
    """modules: kohya name -> ({tensor: shape} as F16 zeros, its F32 alpha)."""
    header: dict = {}
    data = b""
    for name, (tensors, alpha) in modules.items():
        for tensor, shape in tensors.items():
            count = 1
            for n in shape:
                count *= n
            header[f"{name}.{tensor}"] = {
                "dtype": "F16",
                "shape": list(shape),
                "data_offsets": [len(data), len(data) + 2 * count],
            }
            data += bytes(2 * count)
        header[f"{name}.alpha"] = {"dtype": "F32", "shape": [], "data_offsets": [len(data), len(data) + 4]}
        data += struct.pack("<f", alpha)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _convert(tmp_path, algo: str, preset: str = PRESET):
    (tmp_path / "preset.toml").write_text(preset, encoding="utf-8")
    images(tmp_path / "x" / "10_ohwx", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=512 --network_module=lycoris.kohya --network_dim=16 "
        f'--network_alpha=8 --network_args "algo={algo}" "preset=preset.toml" '
        "--network_weights=prev.safetensors --learning_rate=1e-4 --max_train_steps=200 "
        "--save_model_as=safetensors",
    )


def test_a_loha_network_with_locon_entries_saved_at_other_alphas_trains_at_the_networks(tmp_path):
    """The U-Net's LoHa modules at the network's alpha 8, CLIP's LoCon entry saved at 2: LyCORIS trains both
    at 8 / 16 (was refused when the run loaded the file)."""
    _write(tmp_path / "prev.safetensors", {Q: (_loha(320, 16), 8.0), TE: (_locon(768, 16), 2.0)})
    outcome = _convert(tmp_path, "loha")
    assert outcome.written, outcome.diagnostics
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "loha" and {b.kind for b in a.text_encoder_blocks} == {"lora"}
    assert (a.alpha, a.init_alpha, a.init_partial) == (8.0, "ignore", True)
    assert fate(outcome, "network_weights") == "differs"
    said = messages(outcome, "DBS404")
    assert f"`{TE}.alpha` is 2, none of the run's alphas (8)" in said and "save_weights" in said
    assert "LyCORIS's modules" in dict(adapter_rows(a))["  starts from"]


def test_a_file_at_the_runs_alphas_keeps_the_check(tmp_path):
    _write(tmp_path / "prev.safetensors", {Q: (_loha(320, 16), 8.0), TE: (_locon(768, 16), 8.0)})
    outcome = _convert(tmp_path, "loha")
    a = plan_of(outcome, tmp_path).adapter
    assert a.init_alpha == "match" and "DBS404" not in codes(outcome)
    assert fate(outcome, "network_weights") == "mapped"


def test_an_entrys_own_alpha_is_the_runs(tmp_path):
    """CLIP's LoCon entry at its own alpha 2: the file's 2 is that block's, nothing ignored; 4 is not."""
    own = PRESET + "alpha = 2\n"
    _write(tmp_path / "prev.safetensors", {Q: (_loha(320, 16), 8.0), TE: (_locon(768, 16), 2.0)})
    outcome = _convert(tmp_path, "loha", own)
    assert plan_of(outcome, tmp_path).adapter.init_alpha == "match" and "DBS404" not in codes(outcome)
    _write(tmp_path / "prev.safetensors", {Q: (_loha(320, 16), 8.0), TE: (_locon(768, 16), 4.0)})
    outcome = _convert(tmp_path, "loha", own)
    assert plan_of(outcome, tmp_path).adapter.init_alpha == "ignore"
    assert "none of the run's alphas (2, 8)" in messages(outcome, "DBS404")


def test_a_locon_network_of_one_kind_saved_at_another_alpha(tmp_path):
    """lycoris.kohya algo=locon alone: LoConModule keeps its scale too (was DBS356 at plan time)."""
    _write(tmp_path / "prev.safetensors", {Q: (_locon(320, 16), 16.0), TE: (_locon(768, 16), 16.0)})
    outcome = _convert(tmp_path, "locon", PRESET.split("[module")[0])
    assert outcome.written, outcome.diagnostics
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.alpha, a.init_alpha) == ("lora", 8.0, "ignore")
    assert f"`{TE}.alpha` is 16, none of the run's alphas (8)" in messages(outcome, "DBS404")


def test_a_dylora_network_with_loha_entries(tmp_path):
    """algo=dylora with a LoHa entry on CLIP: the LoHa module at another alpha trains at the network's
    (DyLoRA layers keep the check); a LoRA-layout module at another alpha is a DyLoraModule's, which LyCORIS
    trains at the file's alpha: DBS403 (was refused when the run loaded the file)."""
    preset = PRESET.replace('algo = "locon"', 'algo = "loha"')
    _write(tmp_path / "prev.safetensors", {Q: (_locon(320, 16), 8.0), TE: (_loha(768, 16), 2.0)})
    outcome = _convert(tmp_path, "dylora", preset)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_alpha) == ("dylora", "ignore")
    assert f"`{TE}.alpha` is 2" in messages(outcome, "DBS404")
    _write(tmp_path / "prev.safetensors", {Q: (_locon(320, 16), 2.0), TE: (_loha(768, 16), 8.0)})
    outcome = _convert(tmp_path, "dylora", preset)
    said = messages(outcome, "DBS403")
    assert f"`{Q}.alpha` is 2" in said and "DyLoraModule scales by the alpha buffer" in said
