"""Specs over well-known hub ids planned offline (an empty hub cache: the registry's public counts), for a
CUDA 24 GB target, over one 512 px image."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dbspec.compiler.target import parse_target
from dbspec.frontend import plan_spec

GPU = parse_target("cuda:24GB:8.9")
SD15 = "runwayml/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))


def plan_hub_spec(tmp_path: Path, tables: str, base: str):
    """Plan a spec of `base` with `tables` (TOML) between [model] and the one dataset."""
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (512, 512), (200, 30, 30)).save(tmp_path / "img" / "a.png")
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'spec_version = 2\n[model]\nbase = "{base}"\n{tables}'
        '[[datasets]]\nname = "s"\npath = "img"\nprompt = "a photo of ohwx"\n[schedule]\nsteps = 10\n'
    )
    return plan_spec(spec, GPU, "spec.toml", [])
