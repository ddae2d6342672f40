"""`dbspec sample` and `dbspec masks` from the command line."""

from __future__ import annotations

from PIL import Image
from typer.testing import CliRunner

from dbspec.cli import app
from dbspec.runtime.execute import execute
from tests.runtime.runspec import make_plan


def test_sample_a_lora_run_and_a_full_run(tmp_path):
    runner = CliRunner()
    lora = execute(make_plan(tmp_path / "lora", steps=1, extra='[adapter]\nkind = "lora"\n'))
    result = runner.invoke(
        app,
        [
            "sample",
            lora.output,
            "-p",
            "a photo of ohwx toy",
            "-p",
            "a toy on a beach",
            "--images",
            "2",
            "--steps",
            "2",
            "--size",
            "64",
            "-o",
            str(tmp_path / "s1"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "s1").iterdir()) == [
        "grid.png",
        "p00-i00.png",
        "p00-i01.png",
        "p01-i00.png",
        "p01-i01.png",
    ]
    assert Image.open(tmp_path / "s1" / "grid.png").size == (128, 128)

    full = execute(make_plan(tmp_path / "full", steps=1))
    result = runner.invoke(
        app,
        [
            "sample",
            full.final,
            "-p",
            "a toy",
            "--steps",
            "2",
            "--size",
            "64",
            "--scheduler",
            "euler",
            "-o",
            str(tmp_path / "s2"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s2" / "p00-i00.png").exists()


def test_sample_lora_without_a_base_says_what_to_pass(tmp_path):
    lora = execute(make_plan(tmp_path, steps=1, extra='[adapter]\nkind = "lora"\n'))
    weights = tmp_path / "only.safetensors"
    weights.write_bytes((tmp_path / "out" / "final" / "pytorch_lora_weights.safetensors").read_bytes())
    result = CliRunner().invoke(app, ["sample", str(weights), "-p", "x", "--size", "64", "--steps", "1"])
    assert result.exit_code == 1 and "--base" in result.output
    # A plan beside the output that fails read_plan (edited: hash mismatch) names no base either.
    plan_file = tmp_path / "out" / "final" / "plan.json"  # read first: the one beside the weights
    plan_file.write_text(plan_file.read_text().replace('"builtin:tiny-sd1"', '"builtin:tiny-sd2"', 1))
    result = CliRunner().invoke(
        app,
        ["sample", lora.output, "-p", "x", "--size", "64", "--steps", "1", "-o", str(tmp_path / "samples")],
    )
    assert result.exit_code == 1 and "--base" in result.output


def test_masks_from_alpha_and_white(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 20, 30))
    rgba.save(images / "a.png")
    Image.new("RGB", (20, 20)).save(images / "b.jpg")
    runner = CliRunner()
    result = runner.invoke(app, ["masks", str(images), "--out", str(tmp_path / "m"), "--from-alpha"])
    assert result.exit_code == 0, result.output
    mask = Image.open(tmp_path / "m" / "a.png")
    assert mask.size == (40, 30) and mask.getpixel((5, 5)) == 255 and mask.getpixel((35, 5)) == 0
    assert not (tmp_path / "m" / "b.png").exists() and "no alpha" in result.output
    result = runner.invoke(app, ["masks", str(images), "--out", str(tmp_path / "w")])
    assert result.exit_code == 0
    assert Image.open(tmp_path / "w" / "b.png").getextrema() == (255, 255)


def test_sample_a_single_file_reads_its_family_from_the_file(tmp_path):
    """No --family: the CLI reads it from the checkpoint's tensor names (an SDXL file gets
    SDXL's pipeline)."""
    from dbspec.runtime import tiny
    from dbspec.runtime.exports import export_single_file

    folder = tiny.materialize("builtin:tiny-sdxl", tmp_path / "tiny")
    pipe = tiny.build_pipeline("builtin:tiny-sdxl")
    path = export_single_file(
        tmp_path / "model.safetensors",
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoders=[pipe.text_encoder, pipe.text_encoder_2],
        family="sdxl",
        dtype="fp32",
        metadata={},
    )
    args = ["sample", str(path), "-p", "a toy", "--steps", "1", "--size", "64", "--config", str(folder)]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "p00-i00.png").is_file()

    (tmp_path / "lone.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "lone.safetensors"), "-p", "x", "-o", "o"])
    assert result.exit_code == 1 and "pass --family" in result.output
