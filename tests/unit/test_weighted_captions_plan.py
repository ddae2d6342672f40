"""Weighted captions in the compiler and the kohya converter: the plan field and summary line, the text cache
key, DBS352 on families without CLIP-window prompts, and kohya's `--weighted_captions` converting."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from convert_kit import SD15, SDXL, codes, empty_hub_cache, fate, images, kohya, plan_of, write  # noqa: F401
from rich.console import Console
from test_compile import compile_in, image, planned_ok, write_spec
from test_compile import codes as plan_codes

from dbspec.compiler.caches import text_key
from dbspec.plan.summary import model_table


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    image(tmp_path / "inst" / "a.png", (64, 64))
    return tmp_path


def _model_summary(plan) -> str:
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(model_table(plan))
    return out.getvalue()


def test_the_plan_holds_weighted_captions_and_shows_them(toy: Path):
    write_spec(toy, model={"base": "builtin:tiny-sd1", "weighted_captions": True})
    plan = planned_ok(toy)
    assert plan.model.weighted_captions
    assert "weighted captions" in _model_summary(plan)
    write_spec(toy, model={"base": "builtin:tiny-sd1"})
    plain = planned_ok(toy)
    assert not plain.model.weighted_captions and "weighted captions" not in _model_summary(plain)
    assert text_key("(a:1.2)", plan.model, "float32") != text_key("(a:1.2)", plain.model, "float32")


@pytest.mark.parametrize("base", ["builtin:tiny-sd3", "builtin:tiny-flux"])
def test_weighted_captions_are_refused_on_families_with_t5(toy: Path, base: str):
    write_spec(toy, model={"base": base, "weighted_captions": True})
    assert "DBS352" in plan_codes(compile_in(toy), "error")


@pytest.mark.parametrize("base", ["builtin:tiny-sdxl", "builtin:tiny-sd2"])
def test_weighted_captions_plan_on_sdxl_and_sd2(toy: Path, base: str):
    write_spec(toy, model={"base": base, "weighted_captions": True})
    assert planned_ok(toy).model.weighted_captions


def test_kohya_weighted_captions_convert_with_shuffle_and_long_prompts(tmp_path: Path):
    """A realistic train_network.py config: weighted captions with shuffled tags kept behind the trigger
    word and three CLIP windows."""
    images(tmp_path / "img" / "10_ohwx toy", 2, (512, 512))
    write(
        tmp_path / "config.toml",
        f'pretrained_model_name_or_path = "{SD15}"\ntrain_data_dir = "img"\nresolution = "512,512"\n'
        'output_dir = "out"\nnetwork_module = "networks.lora"\nnetwork_dim = 16\nnetwork_alpha = 8\n'
        'learning_rate = 1e-4\nmax_train_steps = 400\ntrain_batch_size = 1\nmixed_precision = "fp16"\n'
        "weighted_captions = true\nshuffle_caption = true\nkeep_tokens = 1\nmax_token_length = 225\n"
        'caption_extension = ".txt"\n',
    )
    outcome = kohya(
        tmp_path, command="accelerate launch train_network.py", config_file=tmp_path / "config.toml"
    )
    assert outcome.written, [d.message for d in outcome.diagnostics]
    assert fate(outcome, "weighted_captions") == "mapped" and "DBS403" not in codes(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.model.weighted_captions and plan.model.max_tokens == 225
    assert plan.datasets[0].caption_processing.shuffle_caption


def test_kohya_sdxl_weighted_captions_convert(tmp_path: Path):
    images(tmp_path / "img" / "5_ohwx dog", 2, (1024, 1024))
    cmd = (
        f"sdxl_train_network.py --pretrained_model_name_or_path {SDXL} --train_data_dir img "
        "--resolution 1024 --network_module networks.lora --output_dir out --weighted_captions"
    )
    outcome = kohya(tmp_path, command=cmd)
    assert fate(outcome, "weighted_captions") == "mapped"
    assert plan_of(outcome, tmp_path).model.weighted_captions


def test_kohya_weighted_captions_off_is_inert(tmp_path: Path):
    images(tmp_path / "img" / "5_ohwx dog", 1, (512, 512))
    write(tmp_path / "c.toml", "weighted_captions = false\n")
    cmd = f"train_db.py --pretrained_model_name_or_path {SD15} --train_data_dir img --resolution 512"
    outcome = kohya(tmp_path, command=cmd, config_file=tmp_path / "c.toml")
    assert fate(outcome, "weighted_captions") == "inert"
    assert not plan_of(outcome, tmp_path).model.weighted_captions
