"""LyCORIS `train_norm` with algo=dylora on SD 1.x (issue 12; was DBS403): create_single_module gives each
norm the preset's walk reaches a NormModule beside the DyloraModules, and the network's `module_dropout`
skips both kinds from torch's global generator in forward order; its `rank_dropout`, which DyloraModule never
reads, the NormModules alone draw (`norm_rank_dropout`; was DBS403). lycoris-lora 4.1.3's network
(create_network over the file test's PRESET, one block per layer so its Python-random block draw is fixed,
every parameter moved at random) and dbspec's converted run (`kind = "dylora"` with `denoiser_norms`, the
same tensors copied in) build the same modules and give the same U-Net outputs over several training
forwards from the same generator state, leaving it in the same state; the run trains the offsets and
resumes bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from dbspec.runtime.tiny import build_pipeline
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_norm_dropouts import draws_as_lycoris
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.test_lycoris_sd_norm_file import _ours_norms

lycoris_kohya = pytest.importorskip("lycoris.kohya")


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def _network(pipe, folder, monkeypatch):
    from tests.runtime.test_lycoris_sd_full_file import PRESET, _named

    kept_lycoris_presets(monkeypatch)
    preset = folder / "preset.toml"
    preset.write_text(PRESET, encoding="utf-8")
    named, unet = _named(pipe.text_encoder), copy.deepcopy(pipe.unet)
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, unet, algo="dylora", block_size="4", conv_dim="4", train_norm="True",
        module_dropout="0.3", rank_dropout="0.4", preset=str(preset),
    )  # fmt: skip
    made.apply_to(named, unet, True, True)
    return made, unet


def _convert(tmp_path):
    from tests.unit.convert_kit import SD15, errors, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} "
        "--train_data_dir=x --resolution=64 --network_module=lycoris.kohya --network_dim=4 --network_alpha=1 "
        '--network_args "algo=dylora" "block_size=4" "conv_dim=4" "train_norm=True" "module_dropout=0.3" '
        '"rank_dropout=0.4" '
        '"preset=preset.toml" --learning_rate=1e-3 --max_train_steps=3 --save_model_as=safetensors '
        "--output_dir=out --seed=1",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, kit.OVERRIDES)


def test_dylora_norm_offsets_draw_as_lycoris_train_and_resume(pipe, tmp_path, monkeypatch):
    from dbspec.runtime.dylora import DyloraLayer

    made, theirs = _network(pipe, tmp_path, monkeypatch)
    kit.moved_state(made, seed=5, scale=0.1)
    lyco = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    assert {type(m).__name__ for m in lyco.values()} == {"DyLoraModule", "NormModule"}
    plan = _convert(tmp_path)
    a = plan.adapter
    assert a.kind == "dylora" and a.dylora_form == "lycoris" and a.module_dropout == 0.3
    assert a.norm_rank_dropout == 0.4  # the NormModules' alone: DyloraModule never reads it (was DBS403)
    from dbspec.runtime.families import family_runtime
    from dbspec.runtime.prepare import configure_models

    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    norms, layers = _ours_norms(comps), kit.kohya_layers(comps, DyloraLayer, adapter=True)
    lyco_norms = {n for n, m in lyco.items() if type(m).__name__ == "NormModule"}
    assert sorted(norms) == sorted(lyco_norms) and norms  # the planned norms: exactly LyCORIS's NormModules
    assert sorted(layers) == sorted(set(lyco) - lyco_norms)
    with torch.no_grad():  # LyCORIS's tensors into dbspec's layers
        for name in lyco_norms:
            norms[name].lora_w_norm.copy_(lyco[name].w_norm)
            norms[name].lora_b_norm.copy_(lyco[name].b_norm)
        for name, layer in layers.items():
            (down,), (up,) = layer.lora_dylora_down["default"], layer.lora_dylora_up["default"]
            down.copy_(lyco[name].down_list[0].view_as(down))
            up.copy_(lyco[name].up_list[0].view_as(up))
            layer.drawn["default"] = 0  # LyCORIS's draw from one block
    ours = comps.unet.float()
    cfg = pipe.unet.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=generator)
    hidden = torch.randn(2, 5, cfg.cross_attention_dim, generator=generator)
    with torch.no_grad():
        made.eval(), theirs.eval()
        plain = theirs(x, 10, hidden).sample  # no dropout (DyloraModule draws its one block in eval too)
        made.train(), theirs.train(), ours.train()
        differ = draws_as_lycoris(theirs, ours, x, hidden, plain)
    assert differ, "the dropouts changed no training forward"

    whole, saved = kit.whole_run(tmp_path)
    assert whole.status == "finished"
    assert any(k.endswith(".w_norm") and v.abs().max() > 0 for k, v in saved.items()), "the offsets trained"
    kit.resumes_bit_exact(tmp_path, whole, saved)
