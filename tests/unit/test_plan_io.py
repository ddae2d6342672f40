"""Plan files (JSON with a version and a content hash) and the `dbspec plan` command's options."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dbspec.cli import app
from dbspec.compiler.target import parse_target
from dbspec.frontend import plan_spec
from dbspec.plan.io import PlanFileError, plan_from_json, plan_hash, plan_to_json, read_plan, write_plan
from dbspec.plan.model import PLAN_VERSION, Plan

ROOT = Path(__file__).resolve().parents[2]
TARGET = "cuda:24GB:8.9"

RICH_SPEC = """\
spec_version = 2

[model]
base = "builtin:tiny-sdxl"

[adapter]
kind = "lora"
rank = 4

[train]
text_encoder = true
text_encoder_stop_step = 4

[[datasets]]
name = "subject"
path = "inst"
captions = "textfile"
prompt = "a photo of ohwx toy"
resolution = 64
repeats = 3
flip = true
mask_from_alpha = true

[[datasets]]
name = "toys"
role = "class"
path = "cls"
prompt = "a photo of a toy"
resolution = 64
generate = 3

[buckets]
step = 16

[loss]
kind = "huber"
min_snr_gamma = 5.0
prior = "base_model"

[optimizer]
lr = 1e-4

[schedule]
epochs = 3
batch_size = 2
lr_schedule = "cosine_with_restarts"
cycles = 2
warmup_steps = 2

[precision]
quantize_denoiser = "int8"

[validation]
prompts = ["ohwx toy on a beach"]

[checkpoints]
every = 3
exports = ["kohya_lora"]

[ema]
enabled = true

[cache]
dir = "cache"

[output]
dir = "out"
"""


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))


@pytest.fixture
def rich_spec(tmp_path: Path) -> Path:
    """A spec touching most of the plan: LoRA on SDXL, masks, textfile captions, class generation, EMA."""
    (tmp_path / "inst").mkdir()
    for k, size in enumerate([(64, 64), (96, 64), (64, 96)]):
        Image.new("RGBA", size, (200, 30, 30, 128)).save(tmp_path / "inst" / f"{k}.png")
        (tmp_path / "inst" / f"{k}.txt").write_text(f"ohwx toy, view {k}")
    path = tmp_path / "spec.toml"
    path.write_text(RICH_SPEC)
    return path


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """specs/quickstart.toml with its images, copied into tmp_path."""
    shutil.copytree(ROOT / "specs" / "data", tmp_path / "data")
    text = (ROOT / "specs" / "quickstart.toml").read_text()
    path = tmp_path / "quickstart.toml"
    path.write_text(text.replace('dir = "output/quickstart"', 'dir = "out"') + '\n[cache]\ndir = "cache"\n')
    return path


def compiled(spec: Path, label: str = "spec.toml") -> Plan:
    planned = plan_spec(spec, parse_target(TARGET), label)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    return planned.plan


# --- JSON ---------------------------------------------------------------------------------------------------


def test_round_trip_is_exact(rich_spec, quickstart):
    for plan in (compiled(rich_spec), compiled(quickstart)):
        text = plan_to_json(plan)
        again = plan_from_json(text)
        assert again == plan
        assert plan_to_json(again) == text
        assert json.loads(text)["plan_hash"] == plan_hash(plan)


def test_rich_plan_holds_what_the_spec_asked_for(rich_spec):
    plan = compiled(rich_spec)
    instance, klass = plan.datasets
    assert instance.mask_source == "alpha" and all(img.mask == "alpha" for img in instance.images)
    assert {img.caption for img in instance.images} == {f"ohwx toy, view {k}" for k in range(3)}
    assert klass.generate is not None and klass.generate.count == 3
    assert plan.loss.prior == "base_model" and plan.loss.formula == (
        "L = mean_inst[ minsnr5(t)·huber0.1(ε̂, ε)·mask/area ] + 1·mean_class[ huber0.1(ε̂, "
        "ε_base(x_t))·mask/area ]"
    )
    assert [(c.name, c.trainable, c.quantized) for c in plan.precision.components] == [
        ("unet", "lora", "int8"),
        ("text_encoder", "lora", "none"),
        ("text_encoder_2", "lora", "none"),
        ("vae", "frozen", "none"),
    ]
    assert plan.schedule.text_encoder_stop_step == 4 and plan.ema.enabled


def test_written_file_reads_back(tmp_path, rich_spec):
    plan = compiled(rich_spec)
    write_plan(plan, tmp_path / "plan.json")
    assert read_plan(tmp_path / "plan.json") == plan


def test_an_edited_plan_is_refused(tmp_path, quickstart):
    text = plan_to_json(compiled(quickstart))
    edited = text.replace('"total_steps": 60', '"total_steps": 61')
    assert edited != text
    with pytest.raises(PlanFileError, match="edited or corrupted"):
        plan_from_json(edited, "plan.json")
    data = json.loads(text)
    del data["plan_hash"]
    with pytest.raises(PlanFileError, match="hash mismatch"):
        plan_from_json(json.dumps(data))


def test_another_plan_version_is_refused_with_what_to_do(quickstart):
    data = json.loads(plan_to_json(compiled(quickstart)))
    data["plan_version"] = PLAN_VERSION + 1
    with pytest.raises(PlanFileError, match=f"plan_version {PLAN_VERSION + 1}.*compile the spec again"):
        plan_from_json(json.dumps(data), "old.json")


@pytest.mark.parametrize(
    "text,message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "plan_version None"),
    ],
)
def test_unreadable_plan_files(text, message):
    with pytest.raises(PlanFileError, match=message):
        plan_from_json(text)


def test_a_rehashed_file_that_does_not_match_the_format_is_refused(quickstart):
    data = json.loads(plan_to_json(compiled(quickstart)))
    del data["plan_hash"]
    data["schedule"]["surprise"] = 1
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    data["plan_hash"] = (
        "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    )  # as a careful editor would
    with pytest.raises(PlanFileError, match="does not match the plan format"):
        plan_from_json(json.dumps(data))


def rehashed(plan: Plan, edit) -> str:
    """The plan's JSON after `edit(data)`, with the hash recomputed as a careful hand editor would."""
    data = json.loads(plan_to_json(plan))
    del data["plan_hash"]
    edit(data)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return json.dumps({**data, "plan_hash": "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()})


def _set(table: str, key: str, value):
    return lambda data: data[table].__setitem__(key, value)


@pytest.mark.parametrize(
    "edit,message",
    [
        (_set("schedule", "batch_size", 0), "schedule.batch_size must be an integer of at least 1; found 0"),
        (
            _set("schedule", "accumulation", 0),
            "schedule.accumulation must be an integer of at least 1; found 0",
        ),
        (
            _set("schedule", "total_steps", -5),
            "schedule.total_steps must be an integer of at least 1; found -5",
        ),
        (_set("optimizer", "lr", -1.0), "optimizer.lr must be a number of 0 or more; found -1.0"),
        (_set("ema", "decay", 1.5), r"ema.decay must be a number in \[0, 1\]; found 1.5"),
        (_set("logging", "every", 0), "logging.every must be an integer of at least 1; found 0"),
        (
            _set("checkpoints", "dir", "/"),
            "checkpoints.dir must be an absolute folder path below a filesystem root",
        ),
        (_set("checkpoints", "dir", "out"), "checkpoints.dir must be an absolute folder path"),
        (
            lambda data: (
                data["loss"].__setitem__("prior", "base_model"),
                data.__setitem__("train_denoiser", False),
            ),
            'loss.prior "base_model" needs train_denoiser = true; found false',
        ),
        (
            lambda data: data["datasets"][0].__setitem__("preserve_output", True),
            r"datasets\[\]\.preserve_output needs an adapter; found adapter 'none'",
        ),
        (
            lambda data: data["loss"]["noise"].__setitem__("min_timestep", 1200),
            "loss.noise needs 0 <= min_timestep <= max_timestep <= 1000",
        ),
        (
            lambda data: data["loss"].__setitem__("kind", "pseudo_huber"),
            "loss.huber must be set exactly for kind pseudo_huber or smooth_l1",
        ),
        (
            lambda data: data["loss"]["noise"].__setitem__("ip_gamma", -0.1),
            "loss.noise.ip_gamma must be a number of at least 0; found -0.1",
        ),
        (
            lambda data: data["datasets"][0]["caption_processing"].__setitem__("caption_dropout_rate", 2.0),
            r"datasets\[0\].caption_processing.caption_dropout_rate must be a number in \[0, 1\]; found 2.0",
        ),
        (
            lambda data: data["datasets"][0]["caption_processing"].update(
                shuffle_caption=True, caption_separator=""
            ),
            r'datasets\[0\].caption_processing.caption_separator must not be ""',
        ),
        (
            lambda data: data["datasets"][0].__setitem__("group", "nowhere"),
            r"datasets\[0\].group must name one of groups\[\].name; found 'nowhere'",
        ),
        (
            lambda data: data["adapter"].update(
                kind="dylora", rank=4, alpha=4.0, dylora_unit=3, dylora_form="kohya"
            ),
            "adapter.rank 4 and conv_rank 0 must be multiples of dylora_unit 3",
        ),
        (
            lambda data: data["adapter"].__setitem__("dylora_unit", 2),
            "adapter.dylora_unit / dylora_form are DyLoRA's; found them on kind 'none'",
        ),
    ],
)
def test_a_rehashed_plan_with_values_the_runtime_cannot_run_is_refused(quickstart, edit, message):
    with pytest.raises(PlanFileError, match=f"^plan.json holds values dbspec cannot run: .*{message}"):
        plan_from_json(rehashed(compiled(quickstart), edit), "plan.json")


def test_a_rehashed_plan_whose_output_overlaps_an_input_is_refused(quickstart):
    plan = compiled(quickstart)
    text = rehashed(plan, _set("checkpoints", "dir", plan.datasets[0].path + "/out"))
    with pytest.raises(
        PlanFileError, match=r"checkpoints.dir .* must not overlap the input folder datasets\[0\].path"
    ):
        plan_from_json(text, "plan.json")


@pytest.mark.parametrize(
    "value,message",
    [
        ("2", 'expected int, found "2" @ schedule.batch_size'),
        (2.7, "expected int, found 2.7 @ schedule.batch_size"),
        (True, "expected int, found true @ schedule.batch_size"),
    ],
)
def test_a_rehashed_plan_with_a_wrong_type_is_refused_not_coerced(quickstart, value, message):
    with pytest.raises(PlanFileError, match=f"does not match the plan format: {message}"):
        plan_from_json(rehashed(compiled(quickstart), _set("schedule", "batch_size", value)), "plan.json")


def test_a_plan_file_that_is_not_utf8_is_refused_naming_the_byte(tmp_path, quickstart):
    path = tmp_path / "plan.json"
    write_plan(compiled(quickstart), path)
    path.write_bytes(path.read_bytes().replace(b'"plan_version"', b'"plan_versi\xe9n"', 1))
    with pytest.raises(PlanFileError, match=r"plan.json is not UTF-8 \(byte 0xe9 at offset \d+\)"):
        read_plan(path)


def test_run_reports_a_bad_plan_file_without_an_internal_error(tmp_path, quickstart):
    path = tmp_path / "plan.json"
    path.write_text(rehashed(compiled(quickstart), _set("schedule", "batch_size", 0)))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, (SystemExit, type(None)))
    assert "schedule.batch_size must be an integer of at least 1; found 0" in result.output
    assert "internal error" not in result.output and not (tmp_path / "out").exists()


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanFileError, match="cannot read"):
        read_plan(tmp_path / "absent.json")


# --- the CLI ------------------------------------------------------------------------------------------------


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["plan", *args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def test_plan_json_writes_the_plan(tmp_path, quickstart):
    out = tmp_path / "plans" / "plan.json"
    code, stdout = run_cli(str(quickstart), "--target", TARGET, "--json", str(out))
    assert code == 0 and f"wrote {out}" in stdout
    assert read_plan(out) == compiled(quickstart, str(quickstart))
    assert "Schedule" in stdout and "60 (1 epoch x 60 steps)" in stdout


def test_explain_lists_every_origin(quickstart):
    code, stdout = run_cli(str(quickstart), "--target", TARGET, "--explain")
    assert code == 0 and "Where each value came from" in stdout
    lines = {line.split("│")[0].strip(): line for line in stdout.splitlines() if "│" in line}
    assert "spec" in lines["optimizer.lr"] and f"{quickstart}:" in lines["optimizer.lr"]
    assert "default" in lines["optimizer.weight_decay"]
    assert "derived" in lines["schedule.total_steps"] and "schedule.steps" in lines["schedule.total_steps"]
    plan = compiled(quickstart)
    assert set(plan.origins) <= set(lines)


def test_format_json_emits_diagnostic_records(tmp_path, quickstart):
    code, stdout = run_cli(
        str(quickstart), "--target", TARGET, "--format", "json", "--set", "schedule.batch_size=32"
    )
    payload = json.loads(stdout)
    assert code == 0 and payload["errors"] == 0 and payload["warnings"] >= 1
    record = payload["diagnostics"][0]
    assert (
        record["code"] == "DBS333"
        and record["severity"] == "warning"
        and record["path"] == "schedule.batch_size"
    )
    assert record["span"]["file"] == "<--set>"
    code, stdout = run_cli(
        str(quickstart), "--target", "mps", "--format", "json", "--set", 'optimizer.kind="adamw8bit"'
    )
    payload = json.loads(stdout)
    assert code == 1 and [d["code"] for d in payload["diagnostics"]] == ["DBS343"]


def test_strict_fails_on_warnings(quickstart):
    args = (str(quickstart), "--target", TARGET, "--set", "schedule.batch_size=32")
    code, stdout = run_cli(*args)
    assert code == 0 and "warning[DBS333]" in stdout
    code, stdout = run_cli(*args, "--strict")
    assert code == 1 and "warning[DBS333]" in stdout
    assert run_cli(str(quickstart), "--target", TARGET, "--strict")[0] == 0


def test_errors_exit_1_and_no_plan_is_written(tmp_path, quickstart):
    out = tmp_path / "plan.json"
    code, stdout = run_cli(
        str(quickstart), "--target", "cuda:16GB:7.5", "--set", 'precision.mixed="bf16"', "--json", str(out)
    )
    assert code == 1 and "error[DBS340]" in stdout and "1 error" in stdout
    assert not out.exists()


def test_bad_target_is_a_usage_error(quickstart):
    code, _ = run_cli(str(quickstart), "--target", "tpu:8GB")
    assert code == 2


def test_plan_download_reports_an_offline_failure(tmp_path, monkeypatch):
    """--download is the only way `dbspec plan` reaches the network; offline it fails with the reason."""
    from typer.testing import CliRunner

    from dbspec.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'spec_version = 2\n[model]\nbase = "acme/not-cached"\n[[datasets]]\nname = "a"\npath = "d"\n'
        'prompt = "x"\n[schedule]\nsteps = 10\n'
    )
    result = CliRunner().invoke(app, ["plan", str(spec), "--download", "--target", "cpu"])
    assert result.exit_code == 1
    assert "cannot download acme/not-cached@main" in result.output


def test_compile_and_optimizer_kernel_round_trip(tmp_path, quickstart):
    """precision.compile (for a GPU: the CPU refuses it, DBS336) and optimizer.implementation in JSON."""
    spec = quickstart
    planned = plan_spec(
        spec,
        parse_target("cuda:24GB"),
        "spec.toml",
        ["precision.compile=true", 'optimizer.implementation="fused"'],
    )
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    plan = planned.plan
    assert plan.precision.compile.components == ("unet",) and plan.precision.compile.dynamic is None
    assert plan.optimizer.implementation == "fused"
    assert plan_from_json(plan_to_json(plan)) == plan
