"""Realistic kohya dataset configs with several [[datasets]], shared by make_reference.py (run against kohya's
own code, outside this repository) and tests/unit/test_convert_kohya_groups.py.

Each case: the dataset TOML's [[datasets]] (resolution, batch size, bucket keys) and their subsets (a folder
of
images of the listed sizes, repeats, is_reg), plus the CLI run length.
"""

from __future__ import annotations

# (width, height) of each image in a folder: phone photos, crops and scans of a realistic mix
PORTRAITS = [(768, 1024), (900, 1200), (1080, 1350), (640, 960), (1024, 1536)]
LANDSCAPES = [(1024, 768), (1920, 1080), (1200, 800), (1600, 900)]
SQUARES = [(512, 512), (1024, 1024), (800, 800)]
SMALL = [(300, 200), (400, 400), (350, 500)]


def _reg(count: int) -> list[tuple[int, int]]:
    """Class images as a generator makes them: square, with a few portraits and landscapes mixed in."""
    sizes = [(512, 512), (512, 768), (768, 512)]
    return [sizes[i % 3] if i % 4 else (512, 512) for i in range(count)]


CASES = {
    # A face set, a full-body set and a style set, each its own resolution, batch size and buckets; reg
    # images balance per [[datasets]] (the probe in the kohya converter's notes: "56 vs 50 reg samples").
    "three_groups": {
        "datasets": [
            {
                "resolution": 512,
                "batch_size": 4,
                "enable_bucket": True,
                "subsets": [
                    {
                        "dir": "face",
                        "sizes": PORTRAITS + SQUARES,
                        "num_repeats": 3,
                        "class_tokens": "ohwx face",
                    },
                    {
                        "dir": "face_reg",
                        "sizes": _reg(30),
                        "num_repeats": 1,
                        "is_reg": True,
                        "class_tokens": "face",
                    },
                ],
            },
            {
                "resolution": 768,
                "batch_size": 2,
                "enable_bucket": True,
                "min_bucket_reso": 384,
                "max_bucket_reso": 1280,
                "bucket_reso_steps": 64,
                "subsets": [
                    {
                        "dir": "body",
                        "sizes": PORTRAITS + LANDSCAPES,
                        "num_repeats": 2,
                        "class_tokens": "ohwx man",
                    },
                    {
                        "dir": "body_reg",
                        "sizes": _reg(7),
                        "num_repeats": 2,
                        "is_reg": True,
                        "class_tokens": "man",
                    },
                ],
            },
            {
                "resolution": 640,
                "batch_size": 3,
                "enable_bucket": True,
                "bucket_no_upscale": True,
                "subsets": [
                    {
                        "dir": "style",
                        "sizes": LANDSCAPES + SMALL + SQUARES,
                        "num_repeats": 5,
                        "class_tokens": "ohwx style",
                    },
                    {
                        "dir": "style_reg",
                        "sizes": _reg(20),
                        "num_repeats": 1,
                        "is_reg": True,
                        "class_tokens": "style",
                    },
                ],
            },
        ],
        "max_train_epochs": 4,
        "gradient_accumulation_steps": 2,
    },
    # Two sets that differ only in batch size, buckets off in one.
    "batch_sizes_and_square": {
        "datasets": [
            {
                "resolution": 512,
                "batch_size": 1,
                "enable_bucket": True,
                "subsets": [
                    {"dir": "a", "sizes": PORTRAITS + LANDSCAPES, "num_repeats": 10, "class_tokens": "ohwx"}
                ],
            },
            {
                "resolution": 512,
                "batch_size": 4,
                "enable_bucket": False,
                "subsets": [
                    {"dir": "b", "sizes": [(512, 512)] * 9, "num_repeats": 7, "class_tokens": "ohwx"}
                ],
            },
        ],
        "max_train_epochs": 3,
        "gradient_accumulation_steps": 1,
    },
    # Same settings in both [[datasets]]: pooling would still differ (each balances and batches apart).
    "uniform_with_reg": {
        "datasets": [
            {
                "resolution": 512,
                "batch_size": 2,
                "enable_bucket": True,
                "subsets": [
                    {"dir": "a", "sizes": PORTRAITS, "num_repeats": 4, "class_tokens": "ohwx dog"},
                    {
                        "dir": "a_reg",
                        "sizes": _reg(12),
                        "num_repeats": 1,
                        "is_reg": True,
                        "class_tokens": "dog",
                    },
                ],
            },
            {
                "resolution": 512,
                "batch_size": 2,
                "enable_bucket": True,
                "subsets": [
                    {"dir": "b", "sizes": LANDSCAPES + SQUARES, "num_repeats": 1, "class_tokens": "ohwx dog"},
                    {
                        "dir": "b_reg",
                        "sizes": _reg(3),
                        "num_repeats": 1,
                        "is_reg": True,
                        "class_tokens": "dog",
                    },
                ],
            },
        ],
        "max_train_epochs": 5,
        "gradient_accumulation_steps": 3,
    },
    # A [[datasets]] holding only reg images: kohya trains none of them (nothing to balance against).
    "reg_only_dataset": {
        "datasets": [
            {
                "resolution": 512,
                "batch_size": 2,
                "enable_bucket": True,
                "subsets": [
                    {"dir": "a", "sizes": SQUARES + PORTRAITS, "num_repeats": 6, "class_tokens": "ohwx cat"}
                ],
            },
            {
                "resolution": 768,
                "batch_size": 1,
                "enable_bucket": True,
                "min_bucket_reso": 384,
                "max_bucket_reso": 1280,
                "subsets": [
                    {"dir": "c", "sizes": LANDSCAPES, "num_repeats": 2, "class_tokens": "ohwx cat"},
                    {
                        "dir": "c_reg",
                        "sizes": _reg(10),
                        "num_repeats": 1,
                        "is_reg": True,
                        "class_tokens": "cat",
                    },
                ],
            },
            {
                "resolution": 512,
                "batch_size": 2,
                "enable_bucket": True,
                "subsets": [
                    {
                        "dir": "lonely_reg",
                        "sizes": _reg(6),
                        "num_repeats": 1,
                        "is_reg": True,
                        "class_tokens": "cat",
                    }
                ],
            },
        ],
        "max_train_epochs": 2,
        "gradient_accumulation_steps": 1,
    },
}

DATASET_KEYS = (
    "resolution",
    "batch_size",
    "enable_bucket",
    "min_bucket_reso",
    "max_bucket_reso",
    "bucket_reso_steps",
    "bucket_no_upscale",
)


def dataset_toml(case: dict) -> str:
    """The case as kohya's dataset config TOML (folders relative to where the images are written)."""
    lines = []
    for d in case["datasets"]:
        lines.append("[[datasets]]")
        for key in DATASET_KEYS:
            if key in d:
                value = d[key]
                lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
        for s in d["subsets"]:
            lines += [
                "  [[datasets.subsets]]",
                f'  image_dir = "{s["dir"]}"',
                f"  num_repeats = {s['num_repeats']}",
            ]
            lines.append(f'  class_tokens = "{s["class_tokens"]}"')
            if s.get("is_reg"):
                lines.append("  is_reg = true")
    return "\n".join(lines) + "\n"


def write_images(root, case: dict) -> None:
    """One solid PNG per listed size, named 000.png, 001.png, ... in each subset's folder."""
    from PIL import Image

    for d in case["datasets"]:
        for s in d["subsets"]:
            folder = root / s["dir"]
            folder.mkdir(parents=True, exist_ok=True)
            for i, size in enumerate(s["sizes"]):
                Image.new("RGB", size, (i * 7 % 256, 90, 140)).save(folder / f"{i:03d}.png")
