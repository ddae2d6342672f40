"""`dbspec env` on this machine: real torch facts and installed versions, text and --json."""

from __future__ import annotations

import json
import logging
from importlib import metadata

import torch
from packaging.version import Version
from typer.testing import CliRunner

from dbspec.cli import app


def test_env_json_reports_the_installed_torch_and_libraries():
    result = CliRunner().invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["torch"]["version"] == torch.__version__
    assert data["torch"]["cuda_available"] == torch.cuda.is_available()
    assert data["libraries"]["diffusers"] == metadata.version("diffusers")
    assert data["libraries"]["peft"] == metadata.version("peft")
    flagged = Version(metadata.version("transformers")) >= Version("5.24") and Version(
        metadata.version("peft")
    ) < Version("0.22")
    assert bool(data["warnings"]) == flagged


def test_env_text_names_each_library():
    result = CliRunner().invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    for name in (
        "dbspec",
        "python",
        "torch",
        "diffusers",
        "transformers",
        "accelerate",
        "peft",
        "optimum-quanto",
        "safetensors",
    ):
        assert any(line.startswith(name + " ") for line in result.output.splitlines()), name


def test_only_the_torchvision_fallback_notice_is_silenced():
    import dbspec.runtime  # noqa: F401 - installs the filter

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("transformers.utils.import_utils")
    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # a run in this process may have quieted transformers to errors only
    try:
        logger.warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
            "`CLIPImageProcessorPil` for backward compatibility."
        )
        logger.warning("some other import problem")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert records == ["some other import problem"]
