"""A `metadata` dataset (kohya's fine-tuning metadata file) trains through the real loop: the images it lists,
with their repeats and the captions kohya makes from `caption` and `tags`, are what the run trains on."""

from __future__ import annotations

import json
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
metadata = "meta.json"
repeats = 2
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


def test_metadata_dataset_trains(tmp_path):
    toys = sorted((ROOT / "specs" / "data" / "toy").glob("*.png"))[:3]
    (tmp_path / "train").mkdir()
    for f in toys:
        shutil.copy(f, tmp_path / "train" / f.name)
    # as kohya's merge scripts write it: file stems as keys (no --full_path), one absolute path (--full_path)
    meta = {
        toys[0].stem: {"caption": "ohwx toy", "tags": "red, small"},
        toys[1].stem: {"tags": "blue"},
        str(tmp_path / "train" / toys[2].name): {"caption": "a toy"},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta, indent=2))
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    plan = compile_spec(spec)
    d = plan.datasets[0]
    assert [img.caption for img in d.images] == ["ohwx toy,red, small", "blue", "a toy"]
    assert {img.repeats for img in d.images} == {2} and d.samples_per_epoch == 6
    result = execute(plan)
    assert result.status == "finished" and result.steps == 3
    trained = load_file(str(Path(result.output) / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    base = build_pipeline("builtin:tiny-sd1").unet.state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in trained)
