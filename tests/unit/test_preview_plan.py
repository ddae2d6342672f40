"""The preview pass: which Tiny AutoEncoder decodes live previews, where it is (built-in, folder, hub cache),
at which sampling steps, and its diagnostics (DBS370, DBS371); the plan summary shows the decision."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from dbspec.compiler.preview import preview_sampling_steps
from dbspec.families import FAMILIES
from dbspec.frontend import plan_spec
from dbspec.plan.summary import render_summary
from tests.runtime.runspec import CPU, write_spec


@pytest.fixture(autouse=True)
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    return tmp_path / "hf-hub"


def _plan(tmp_path: Path, validation: str, base: str = "builtin:tiny-sd1"):
    spec = write_spec(
        tmp_path, base=base, extra='[validation]\nprompts = ["a photo of ohwx toy"]\nsteps = 6\n' + validation
    )
    planned = plan_spec(spec, CPU, str(spec), [])
    return planned.plan, [(d.code, d.severity, d.path) for d in planned.diagnostics]


def _taesd_folder(folder: Path, class_name: str = "AutoencoderTiny", channels: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": class_name, "latent_channels": channels}))
    return folder


def test_sampling_steps_are_every_nth():
    assert preview_sampling_steps(2, 5) == (2, 4)
    assert preview_sampling_steps(3, 6) == (3, 6)
    assert preview_sampling_steps(7, 6) == ()
    assert preview_sampling_steps(0, 6) == ()


def test_previews_off_by_default(tmp_path):
    plan, _ = _plan(tmp_path, "")
    assert plan.validation.preview is None


def test_a_builtin_preview_model_with_a_webhook(tmp_path):
    plan, diagnostics = _plan(
        tmp_path,
        'preview_every = 2\npreview_model = "builtin:tiny-taesd"\nwebhook = "http://127.0.0.1:9/p"\n',
    )
    p = plan.validation.preview
    assert diagnostics == []
    assert (p.source, p.resolved, p.sampling_steps, p.webhook, p.webhook_timeout) == (
        "builtin",
        True,
        (2, 4, 6),
        "http://127.0.0.1:9/p",
        2.0,
    )
    console = Console(file=io.StringIO(), width=200)
    render_summary(plan, console)
    summary = console.file.getvalue()
    assert "builtin:tiny-taesd (built-in) at sampling steps 2, 4, 6" in summary
    assert "POST to http://127.0.0.1:9/p" in summary


def test_the_default_model_is_the_familys_and_a_missing_hub_id_is_a_warning(tmp_path, hub_cache):
    plan, diagnostics = _plan(tmp_path, "preview_every = 3\n")
    p = plan.validation.preview
    assert p.model == FAMILIES["sd1"].preview_vae == "madebyollin/taesd"
    assert (p.source, p.path, p.resolved) == ("hub", "", False)
    assert ("DBS370", "warning", "validation.preview_model") in diagnostics
    # Once in the cache (as `plan --download` leaves it), it resolves to the snapshot folder.
    repo = hub_cache / "models--madebyollin--taesd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    snapshot = _taesd_folder(repo / "snapshots" / ("a" * 40))
    plan, diagnostics = _plan(tmp_path, "preview_every = 3\n")
    assert (plan.validation.preview.path, plan.validation.preview.resolved) == (str(snapshot), True)
    assert diagnostics == []


def test_sdxl_defaults_to_taesdxl(tmp_path):
    plan, _ = _plan(tmp_path, "preview_every = 3\n", base="builtin:tiny-sdxl")
    assert plan.validation.preview.model == "madebyollin/taesdxl"


def test_a_local_folder(tmp_path):
    folder = _taesd_folder(tmp_path / "taesd")
    plan, diagnostics = _plan(tmp_path, 'preview_every = 3\npreview_model = "taesd"\n')
    assert (plan.validation.preview.source, plan.validation.preview.path) == ("diffusers", str(folder))
    assert diagnostics == []


@pytest.mark.parametrize(
    ("make", "model", "expected"),
    [
        (None, "missing-folder", "it is missing"),
        (
            lambda t: _taesd_folder(t / "vae", "AutoencoderKL"),
            "vae",
            "'AutoencoderKL', not a diffusers AutoencoderTiny",
        ),
        (
            lambda t: _taesd_folder(t / "wide", channels=16),
            "wide",
            "decodes 16 latent channels; the base model has 4",
        ),
        (None, "builtin:tiny-nothing", "unknown built-in preview model 'builtin:tiny-nothing'"),
    ],
)
def test_an_unusable_preview_model_is_an_error(tmp_path, make, model, expected):
    if make is not None:
        make(tmp_path)
    spec = write_spec(
        tmp_path,
        extra=f'[validation]\nprompts = ["a toy"]\nsteps = 6\npreview_every = 3\npreview_model = "{model}"\n',
    )
    planned = plan_spec(spec, CPU, str(spec), [])
    assert planned.plan is None
    hits = [d for d in planned.diagnostics if d.code == "DBS371"]
    assert len(hits) == 1 and hits[0].path == "validation.preview_model" and expected in hits[0].message


def _download_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path, extra='[validation]\nprompts = ["a toy"]\nsteps = 4\npreview_every = 2\n')


def test_plan_download_fetches_the_familys_preview_model(tmp_path, hub_cache, monkeypatch):
    """The preview model is known once the base model is planned; --download fetches it, then plans again."""
    from typer.testing import CliRunner

    from dbspec.cli import app
    from dbspec.compiler import hub

    fetched = []

    def fake_download(repo_id: str, revision: str) -> Path:  # stands in for the network: fills the cache
        fetched.append((repo_id, revision))
        repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("b" * 40)
        return _taesd_folder(repo / "snapshots" / ("b" * 40))

    monkeypatch.setattr(hub, "download", fake_download)
    result = CliRunner().invoke(app, ["plan", str(_download_spec(tmp_path)), "--download", "--target", "cpu"])
    assert result.exit_code == 0, result.output
    assert fetched == [("madebyollin/taesd", "main")]
    assert "downloaded madebyollin/taesd" in result.output and "DBS370" not in result.output
    assert "madebyollin/taesd (" in result.output  # the summary's previews row, found in the cache


def test_plan_download_of_the_preview_model_offline_fails_with_the_reason(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dbspec.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["plan", str(_download_spec(tmp_path)), "--download", "--target", "cpu"])
    assert result.exit_code == 1
    assert "cannot download madebyollin/taesd@main" in result.output
