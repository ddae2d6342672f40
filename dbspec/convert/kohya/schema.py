"""kohya's dataset-config schema (`library/config_util.py: ConfigSanitizer`), as data.

Types are voluptuous types: a Python isinstance check, so `float` keys reject integers unless listed as
float-or-int, and booleans are not strings. Which keys may appear where depends on the subset kind
(DreamBooth, fine-tuning, ControlNet/masked loss).
"""

from __future__ import annotations

from typing import Any

INT, FLOAT, NUM, STR, BOOL, DICT = (int,), (float,), (int, float), (str,), (bool,), (dict,)
PAIR_INT = "int or [int, int]"
PAIR_FLOAT = "[float, float]"

DATASET_KEYS: dict[str, Any] = {
    "resolution": PAIR_INT,
    "batch_size": INT,
    "enable_bucket": BOOL,
    "min_bucket_reso": INT,
    "max_bucket_reso": INT,
    "bucket_reso_steps": INT,
    "bucket_no_upscale": BOOL,
    "network_multiplier": FLOAT,
    "validation_split": FLOAT,
    "validation_seed": INT,
    "resize_interpolation": STR,
}
_ASCENDABLE: dict[str, Any] = {
    "num_repeats": INT,
    "shuffle_caption": BOOL,
    "caption_separator": STR,
    "keep_tokens": INT,
    "keep_tokens_separator": STR,
    "secondary_separator": STR,
    "enable_wildcard": BOOL,
    "caption_prefix": STR,
    "caption_suffix": STR,
    "color_aug": BOOL,
    "flip_aug": BOOL,
    "random_crop": BOOL,
    "face_crop_aug_range": PAIR_FLOAT,
    "token_warmup_min": INT,
    "token_warmup_step": NUM,
    "custom_attributes": DICT,
    "resize_interpolation": STR,
}
_DROPOUT = {
    "caption_dropout_rate": NUM,
    "caption_dropout_every_n_epochs": INT,
    "caption_tag_dropout_rate": NUM,
}
_DB_ASCENDABLE = {"caption_extension": STR, "class_tokens": STR, "cache_info": BOOL}
_CN_ASCENDABLE = {"caption_extension": STR, "cache_info": BOOL}
SUBSET_ONLY = {
    "dreambooth": {"image_dir": STR, "is_reg": BOOL, "alpha_mask": BOOL},
    "finetune": {"image_dir": STR, "metadata_file": STR, "alpha_mask": BOOL},
    "controlnet": {"image_dir": STR, "conditioning_data_dir": STR},
}
REQUIRED = {
    "dreambooth": ("image_dir",),
    "finetune": ("metadata_file",),
    "controlnet": ("image_dir", "conditioning_data_dir"),
}
# dataset-level key -> argparse attribute it falls back to (kohya renames two)
ARGPARSE_NAME = {"batch_size": "train_batch_size", "num_repeats": "dataset_repeats"}
# dataclass defaults (config_util.BaseSubsetParams / BaseDatasetParams ...), used when argparse has no value
DEFAULTS: dict[str, Any] = {
    "resolution": None,
    "batch_size": 1,
    "enable_bucket": False,
    "min_bucket_reso": 256,
    "max_bucket_reso": 1024,
    "bucket_reso_steps": 64,
    "bucket_no_upscale": False,
    "network_multiplier": 1.0,
    "validation_split": 0.0,
    "validation_seed": None,
    "resize_interpolation": None,
    "num_repeats": 1,
    "shuffle_caption": False,
    "caption_separator": ",",
    "keep_tokens": 0,
    "keep_tokens_separator": None,
    "secondary_separator": None,
    "enable_wildcard": False,
    "caption_prefix": None,
    "caption_suffix": None,
    "color_aug": False,
    "flip_aug": False,
    "random_crop": False,
    "face_crop_aug_range": None,
    "token_warmup_min": 1,
    "token_warmup_step": 0,
    "custom_attributes": None,
    "caption_dropout_rate": 0.0,
    "caption_dropout_every_n_epochs": 0,
    "caption_tag_dropout_rate": 0.0,
    "caption_extension": ".caption",
    "class_tokens": None,
    "cache_info": False,
    "image_dir": None,
    "is_reg": False,
    "alpha_mask": False,
    "metadata_file": None,
    "conditioning_data_dir": None,
}


def ascendable(kind: str) -> dict[str, Any]:
    """Subset keys that may also be set in [general] or [[datasets]] for this subset kind."""
    own = {"dreambooth": _DB_ASCENDABLE, "controlnet": _CN_ASCENDABLE, "finetune": {}}[kind]
    return {**_ASCENDABLE, **_DROPOUT, **own}


def subset_keys(kind: str) -> dict[str, Any]:
    return {**ascendable(kind), **SUBSET_ONLY[kind]}


def type_problem(value: Any, expected: Any) -> str:
    """ "" when `value` has the expected voluptuous type, else kohya's complaint."""
    if expected == PAIR_INT:
        ok = _is_int(value) or (
            isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)
        )
        return "" if ok else "expected int or a list of two ints"
    if expected == PAIR_FLOAT:
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value)
        return "" if ok else "expected a list of two floats"
    if isinstance(value, bool) and bool not in expected:
        return f"expected {'/'.join(t.__name__ for t in expected)}, got a boolean"
    return "" if isinstance(value, expected) else f"expected {'/'.join(t.__name__ for t in expected)}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
