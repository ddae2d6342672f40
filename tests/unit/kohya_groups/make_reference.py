"""Writes reference.json: kohya-ss sd-scripts' own numbers for the configs in cases.py.

Run OUTSIDE this repository, in a folder holding kohya's `library/` at the commit named below and a
`stubs.py` that stands in for the modules kohya imports but these code paths never call (cv2, toml,
voluptuous, einops, torchvision; imagesize reads sizes with Pillow):

    git --git-dir=<sd-scripts> archive 48d368fa library | tar -x -C /tmp/k
    cp cases.py make_reference.py stubs.py /tmp/k
    cd /tmp/k && python make_reference.py > reference.json

It builds kohya's DreamBoothSubset / DreamBoothDataset objects per [[datasets]] (kohya's reg balancing runs in
DreamBoothDataset.__init__), calls make_buckets() (kohya's bucket placement and batch list), concatenates
them in
kohya's DatasetGroup, and records len() of that (the DataLoader's batches: kohya's DataLoader has batch_size 1
over a dataset whose items are whole batches), the balanced sample counts, and train_db.py's step arithmetic:
steps per epoch = ceil(len(dataloader) / num_processes / gradient_accumulation_steps), max_train_steps =
max_train_epochs x that.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import stubs  # noqa: F401 - must come before kohya's modules
from cases import CASES, write_images
from library import train_util
from PIL import Image

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
train_util.imagesize.get = lambda path: Image.open(path).size  # what imagesize.get returns


def subset(root: Path, s: dict) -> train_util.DreamBoothSubset:
    return train_util.DreamBoothSubset(
        image_dir=str(root / s["dir"]),
        is_reg=bool(s.get("is_reg")),
        class_tokens=s["class_tokens"],
        caption_extension=".caption",
        cache_info=False,
        alpha_mask=False,
        num_repeats=s["num_repeats"],
        shuffle_caption=False,
        caption_separator=",",
        keep_tokens=0,
        keep_tokens_separator="",
        secondary_separator=None,
        enable_wildcard=False,
        color_aug=False,
        flip_aug=False,
        face_crop_aug_range=None,
        random_crop=False,
        caption_dropout_rate=0.0,
        caption_dropout_every_n_epochs=0,
        caption_tag_dropout_rate=0.0,
        caption_prefix=None,
        caption_suffix=None,
        token_warmup_min=1,
        token_warmup_step=0,
    )


def dataset(root: Path, d: dict) -> train_util.DreamBoothDataset:
    reso = d["resolution"]
    out = train_util.DreamBoothDataset(
        [subset(root, s) for s in d["subsets"]],
        is_training_dataset=True,
        batch_size=d["batch_size"],
        resolution=(reso, reso),
        network_multiplier=1.0,
        enable_bucket=d.get("enable_bucket", False),
        min_bucket_reso=d.get("min_bucket_reso", 256),
        max_bucket_reso=d.get("max_bucket_reso", 1024),
        bucket_reso_steps=d.get("bucket_reso_steps", 64),
        bucket_no_upscale=d.get("bucket_no_upscale", False),
        prior_loss_weight=1.0,
        debug_dataset=False,
        validation_split=0.0,
        validation_seed=None,
        resize_interpolation=None,
    )
    out.make_buckets()
    return out


def reference(case: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root, case)
        datasets = [dataset(root, d) for d in case["datasets"]]
        group = train_util.DatasetGroup(datasets)
        per = []
        for ds in datasets:
            infos = list(ds.image_data.values())
            per.append(
                {
                    "instance_samples": sum(i.num_repeats for i in infos if not i.is_reg),
                    "reg_samples": sum(i.num_repeats for i in infos if i.is_reg),
                    "batches": len(ds),
                }
            )
        batches = len(group)
        steps_per_epoch = math.ceil(batches / 1 / case["gradient_accumulation_steps"])
        return {
            "datasets": per,
            "reg_samples": sum(p["reg_samples"] for p in per),
            "batches_per_epoch": batches,
            "steps_per_epoch": steps_per_epoch,
            "max_train_steps": case["max_train_epochs"] * steps_per_epoch,
        }


if __name__ == "__main__":
    json.dump(
        {"kohya_commit": COMMIT, "cases": {name: reference(case) for name, case in CASES.items()}},
        sys.stdout,
        indent=1,
    )
    print()
