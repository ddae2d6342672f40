"""A `layout = "kohya_folders"` dataset trains through the real loop: the plan's sub-folder images, with their
repeats and folder-name captions, are what the run encodes and trains on."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import ROOT, compile_spec

SPEC = """\
spec_version = 1

[model]
base = "builtin:tiny-sd1"

[[datasets]]
name = "toy"
path = "train"
layout = "kohya_folders"
captions = "textfile"
resolution = 64

[buckets]
step = 16

[optimizer]
lr = 1e-3

[schedule]
steps = 3
batch_size = 2

[cache]
dir = "cache"

[output]
dir = "out"
"""


def test_kohya_folders_dataset_trains(tmp_path):
    toys = sorted((ROOT / "specs" / "data" / "toy").glob("*.png"))[:4]
    for folder, files in (("3_ohwx toy", toys[:2]), ("1_toy", toys[2:])):
        (tmp_path / "train" / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, tmp_path / "train" / folder / f.name)
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    plan = compile_spec(spec)
    d = plan.datasets[0]
    assert [(f.name, f.repeats) for f in d.folders] == [("1_toy", 1), ("3_ohwx toy", 3)]
    assert d.samples_per_epoch == 2 * 3 + 2 * 1
    assert {img.caption for img in d.images} == {"ohwx toy", "toy"}
    result = execute(plan)
    assert result.status == "finished" and result.steps == 3
    trained = load_file(str(Path(result.output) / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    base = build_pipeline("builtin:tiny-sd1").unet.state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in trained)
