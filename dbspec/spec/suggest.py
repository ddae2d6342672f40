"""Did-you-mean for unknown keys: the table's own fields, keys of other tables, and other tools' names."""

from __future__ import annotations

import difflib
import attrs

from dbspec.spec.model import table_classes

# Keys users bring from kohya sd-scripts and the diffusers scripts, and the dbspec key that holds the meaning.
LEGACY_NAMES: dict[str, str] = {
    "learning_rate": "optimizer.lr",
    "learning_rate_te": "optimizer.text_encoder_lr",
    "text_encoder_lr": "optimizer.text_encoder_lr",
    "train_batch_size": "schedule.batch_size",
    "max_train_steps": "schedule.steps",
    "max_train_epochs": "schedule.epochs",
    "num_train_epochs": "schedule.epochs",
    "gradient_accumulation_steps": "schedule.accumulation",
    "lr_scheduler": "schedule.lr_schedule",
    "lr_warmup_steps": "schedule.warmup_steps",
    "lr_scheduler_num_cycles": "schedule.cycles",
    "lr_scheduler_power": "schedule.power",
    "lr_scheduler_min_lr_ratio": "schedule.min_lr_ratio",
    "lr_decay_steps": "schedule.decay_steps",
    "T_max": "schedule.t_max",
    "full_bf16": "precision.weights",
    "full_fp16": "precision.weights",
    "pretrained_model_name_or_path": "model.base",
    "v_parameterization": "model.prediction",
    "mixed_precision": "precision.mixed",
    "prior_loss_weight": "loss.prior_weight",
    "snr_gamma": "loss.min_snr_gamma",
    "network_dim": "adapter.rank",
    "network_alpha": "adapter.alpha",
    "num_repeats": "datasets.repeats",
    "instance_prompt": "datasets.prompt",
    "class_prompt": "datasets.prompt",
    "instance_data_dir": "datasets.path",
    "class_data_dir": "datasets.path",
    "image_dir": "datasets.path",
    "num_class_images": "datasets.generate",
    "flip_aug": "datasets.flip",
    "random_crop": "datasets.crop",
    "enable_bucket": "buckets.mode",
    "bucket_reso_steps": "buckets.step",
    "min_bucket_reso": "buckets.min_size",
    "max_bucket_reso": "buckets.max_size",
    "bucket_no_upscale": "buckets.no_upscale",
    "save_every_n_steps": "checkpoints.every",
    "checkpointing_steps": "checkpoints.every",
    "validation_prompt": "validation.prompts",
    "seed": "schedule.seed",
    "output_dir": "output.dir",
    "stop_text_encoder_training": "train.text_encoder_stop_step",
    "train_text_encoder": "train.text_encoder",
}


def _fields_by_table() -> dict[str, set[str]]:
    """ "optimizer" -> its field names, for every table (datasets included, adapter variants merged)."""
    return {
        name: {f.name for cls in classes for f in attrs.fields(cls)}
        for name, classes in table_classes().items()
    }


def suggest(key: str, table: str, own_fields: set[str]) -> str:
    """A help line for an unknown `key` met in `table` (top-level name, "" for the top level)."""
    close = difflib.get_close_matches(key, sorted(own_fields), n=1, cutoff=0.6)
    if close and key not in LEGACY_NAMES:  # another tool's exact name beats a near field (learning_rate)
        return f"did you mean `{close[0]}`?"
    legacy = difflib.get_close_matches(key, sorted(LEGACY_NAMES), n=1, cutoff=0.8)
    if legacy:
        where, _, name = LEGACY_NAMES[legacy[0]].rpartition(".")
        if where == table:
            return f"did you mean `{name}`?"
        return f"`{legacy[0]}` is another tool's name; in dbspec it is `{name}` in {_table_ref(where)}"
    for other, names in sorted(_TABLES.items()):
        if other != table and key in names:
            return f"`{key}` belongs in {_table_ref(other)}"
    for other, names in sorted(_TABLES.items()):
        close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.8)
        if other != table and close:
            return f"did you mean `{close[0]}` in {_table_ref(other)}?"
    return f"allowed keys: {', '.join(sorted(own_fields))}" if own_fields else ""


def _table_ref(name: str) -> str:
    return "[[datasets]]" if name == "datasets" else f"[{name}]"


_TABLES = _fields_by_table()
