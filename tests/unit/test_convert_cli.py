"""`dbspec convert` on the command line: shell parsing of launch scripts, exit codes,
--report, standard input."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from convert_kit import SD15, empty_hub_cache, images, out_path, plan_at, write  # noqa: F401
from dbspec.cli import app
from dbspec.convert.common.argv import Arg, int_or_float, parse_argv
from dbspec.convert.common.shell import split_command

runner = CliRunner()


def test_posix_scripts_join_continuations_expand_variables_and_skip_comments():
    text = (
        '#!/bin/bash\nMODEL="/models/sd 15.safetensors"\n# accelerate launch old.py --x 1\n'
        "cd /kohya && accelerate launch --num_processes=1 train_db.py \\\n"
        '  --pretrained_model_name_or_path="$MODEL" --caption_extension=".txt" \\\n'
        "  --train_data_dir='/data/train' --output_name=run#1 # trailing comment\necho done\n"
    )
    command = split_command(text)
    assert command.script == "train_db.py" and command.launcher[-1] == "--num_processes=1"
    assert command.args == (
        "--pretrained_model_name_or_path=/models/sd 15.safetensors",
        "--caption_extension=.txt",
        "--train_data_dir=/data/train",
        "--output_name=run#1",
    )


def test_cmd_scripts_use_caret_continuations_and_keep_backslashes():
    text = (
        '@echo off\r\nset DATA=C:\\data\\train\r\naccelerate launch "sd-scripts\\sdxl_train_network.py" ^\r\n'
        '  --train_data_dir="%DATA%" --network_args "conv_dim=4" "conv_alpha=1" ^\r\n'
        "  --output_dir=D:\\out\r\n"
    )
    command = split_command(text)
    assert command.script == "sdxl_train_network.py"
    assert command.args == (
        "--train_data_dir=C:\\data\\train",
        "--network_args",
        "conv_dim=4",
        "conv_alpha=1",
        "--output_dir=D:\\out",
    )


def test_argparse_rules_last_wins_prefixes_lists_and_ratios():
    table = {
        n: Arg(name=n, kind=k)
        for n, k in (
            ("learning_rate", "float"),
            ("learning_rate_te", "float"),
            ("optimizer_args", "list"),
            ("xformers", "flag"),
            ("lr_warmup_steps", "int_or_float"),
            ("seed", "int"),
        )
    }
    parsed = parse_argv(
        [
            "--learning_rate",
            "1e-4",
            "--optimizer_args",
            "a=1",
            "b=2",
            "--xformers",
            "--learning_rate=2e-4",
            "--lr_warmup",
            "10%",
            "--seed",
            "-1",
            "--learning",
            "x",
        ],
        table,
    )
    assert parsed.values == {
        "optimizer_args": ["a=1", "b=2"],
        "xformers": True,
        "learning_rate": 2e-4,
        "lr_warmup_steps": 0.1,
        "seed": -1,
    }
    assert parsed.problems[0][2].startswith("ambiguous option")
    assert parsed.problems[0][:2] == ("--learning", "x")  # the value as written, for the report
    unknown = parse_argv(["--initial_step", "10", "--xformers", "--made_up=3", "--other", "a", "b"], table)
    assert [p[:2] for p in unknown.problems] == [
        ("--initial_step", "10"),
        ("--made_up", "3"),
        ("--other", "a b"),
    ]
    assert unknown.values == {"xformers": True}
    assert (int_or_float("100"), int_or_float("0.05"), int_or_float("5%")) == (100, 0.05, 0.05)
    with pytest.raises(ValueError):
        int_or_float("12.5")


def test_cli_converts_from_standard_input_and_reports_every_key(tmp_path, monkeypatch):
    images(tmp_path / "train" / "5_ohwx", 2, (512, 512))
    monkeypatch.chdir(tmp_path)
    command = (
        f"accelerate launch train_db.py --pretrained_model_name_or_path {SD15} --train_data_dir train "
        "--resolution 512 --max_train_steps 20 --xformers"
    )
    result = runner.invoke(
        app, ["convert", "kohya", "--command", "-", "-o", "specs/converted.toml", "--report"], input=command
    )
    assert result.exit_code == 0, result.output
    assert (
        "xformers" in result.output
        and "inert" in result.output
        and "wrote specs/converted.toml" in result.output
    )
    plan = plan_at(out_path(tmp_path))
    assert plan.schedule.total_steps == 20 and plan.datasets[0].images[0].repeats == 5


def test_cli_exit_codes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    bad = runner.invoke(
        app,
        [
            "convert",
            "kohya",
            "--command",
            f"train_db.py --pretrained_model_name_or_path {SD15} "
            "--train_data_dir d --resolution 512 --enable_bucket --bucket_reso_steps 48",
            "-o",
            "x.toml",
        ],
    )
    assert bad.exit_code == 1 and "DBS402" in bad.output and not (tmp_path / "x.toml").exists()
    missing = runner.invoke(app, ["convert", "diffusers", "--command", "nope.sh", "-o", "x.toml"])
    assert missing.exit_code == 1 and "DBS401" in missing.output
    usage = runner.invoke(app, ["convert", "kohya", "-o", "x.toml"])
    assert usage.exit_code == 2
    wrong_script = runner.invoke(
        app, ["convert", "kohya", "--script", "fine_tune", "--train-data-dir", "d", "-o", "x.toml"]
    )
    assert wrong_script.exit_code == 2
    as_json = runner.invoke(
        app, ["convert", "diffusers", "--command", "nope.sh", "-o", "x.toml", "--format", "json"]
    )
    assert as_json.exit_code == 1 and '"code": "DBS401"' in as_json.output


def test_cli_simpletuner_and_written_spec_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images(tmp_path / "img", 2, (512, 512))
    write(
        tmp_path / "config.json",
        f'{{"model_family": "sd1x", "pretrained_model_name_or_path": "{SD15}", '
        '"noise_offset": 0, "max_train_steps": 10, "optimizer": "optimi-adamw", "learning_rate": 1e-4}',
    )
    write(
        tmp_path / "backend.json",
        '[{"id": "toy", "instance_data_dir": "img", "caption_strategy": '
        '"instanceprompt", "instance_prompt": "sks toy", "resolution": 512, '
        '"resolution_type": "pixel_area"}]',
    )
    result = runner.invoke(
        app,
        [
            "convert",
            "simpletuner",
            "--config",
            "config.json",
            "--backend",
            "backend.json",
            "-o",
            str(out_path(tmp_path)),
        ],
    )
    assert result.exit_code == 0, result.output
    text = out_path(tmp_path).read_text()
    lines = text.splitlines()
    assert lines[0] == "#:schema ../schemas/dbspec.schema.json" and "spec_version = 2" in lines
    tables = [line for line in lines if line.startswith("[")]
    assert tables == [
        "[model]",
        "[[datasets]]",
        "[adapter]",
        "[optimizer]",
        "[schedule]",
        "[precision]",
        "[checkpoints]",  # checkpoint_step_interval's default 500
        "[output]",
    ]
    assert all(
        "# SimpleTuner" in line for line in lines if " = " in line and not line.startswith(("#", "spec_"))
    )


def test_converted_values_keep_their_legacy_origin_in_the_plan(tmp_path):
    """`dbspec plan --explain` shows, for a converted spec, which legacy key each value came from."""
    from PIL import Image

    from dbspec.frontend import plan_spec
    from dbspec.plan.model import TargetEnv

    folder = tmp_path / "train" / "5_sks dog"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (512, 512), (i, 0, 0)).save(folder / f"{i}.png")
    command = tmp_path / "cmd.sh"
    command.write_text(
        'accelerate launch train_db.py --pretrained_model_name_or_path="runwayml/stable-diffusion-v1-5" '
        '--train_data_dir="train" --resolution=512 --learning_rate=1e-6 --max_train_steps=100\n'
    )
    from typer.testing import CliRunner

    from dbspec.cli import app

    out = tmp_path / "spec.toml"
    result = CliRunner().invoke(
        app, ["convert", "kohya", "--command", str(command), "--cwd", str(tmp_path), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    planned = plan_spec(
        out, TargetEnv(device="cuda", memory_bytes=24 << 30, bf16=True, compute_capability="8.9")
    )
    origin = planned.plan.origins["optimizer.lr"]
    assert origin.kind == "converted" and "learning_rate" in origin.note
    assert planned.plan.origins["datasets[0].repeats"].kind == "converted"


def test_convert_set_applies_to_every_converter_and_bad_overrides_are_named(tmp_path):
    images(tmp_path / "toy", 2, (512, 512))
    out = out_path(tmp_path)
    command = (
        f"train_dreambooth.py --pretrained_model_name_or_path={SD15} --instance_data_dir=toy "
        '--instance_prompt="a sks toy" --max_train_steps=20'
    )
    base = ["convert", "diffusers", "--command", command, "--cwd", str(tmp_path), "-o", str(out)]
    given = runner.invoke(app, [*base, "--set", "optimizer.lr=3e-6", "--set", "datasets[0].flip=true"])
    assert given.exit_code == 0, given.output
    plan = plan_at(out)
    assert plan.optimizer.lr == pytest.approx(3e-6) and plan.datasets[0].flip
    bad = runner.invoke(app, [*base, "--set", "optimizer.lr"])
    assert bad.exit_code == 1 and "DBS004" in bad.output and "optimizer.lr" in bad.output
