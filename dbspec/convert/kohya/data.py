"""kohya datasets as kohya builds them: the dataset config (or the legacy folder names), validated by kohya's
schema, with every subset value resolved through kohya's fallback chain and the legacy key it came from.

Fallback order (config_util.BlueprintGenerator): subset -> [[datasets]] -> [general] -> the parsed namespace's
value of the same name (CLI, config_file or argparse default; config_file keys that are no option of the
script too, `dataset_repeats` as `num_repeats`) -> the dataclass default. The first non-None value wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import tomli

from dbspec.convert.kohya import schema as ks
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.paths import PathMapper

Args = dict[str, Legacy]


@attrs.frozen(kw_only=True)
class KSubset:
    index: int
    values: dict[str, Legacy]  # every subset key, effective, with the legacy key it came from
    # a train_data_dir/reg_data_dir not on this machine: its `N_class tokens` sub-folders are listed at plan
    # time (layout = "kohya_folders"), so image_dir is the parent and repeats/class tokens come from the names
    kohya_root: bool = False


@attrs.frozen(kw_only=True)
class KDataset:
    index: int
    kind: str  # dreambooth | controlnet | finetune
    values: dict[str, Legacy]  # every dataset-level key, effective
    subsets: tuple[KSubset, ...]


def load_dataset_config(path: Path, conv: Conversion) -> dict | None:
    """kohya's load_user_config: .toml or .json; None (reported) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:  # not on this machine: no rule of kohya's
        conv.unreadable(
            Legacy(key="dataset_config", value=str(path), source="dataset_config"), exc.strerror or str(exc)
        )
        return None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomli.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        conv.invalid("dataset_config", str(path), "dataset_config", f"cannot read it: {exc}")
        return None
    if not isinstance(data, dict):
        conv.invalid("dataset_config", str(path), "dataset_config", "expected a table at the top level")
        return None
    return data


def folder_config(args: Args, paths: PathMapper, conv: Conversion) -> dict | None:
    """generate_dreambooth_subsets_config_by_subdirs: one dataset from `N_class tokens` sub-folders."""
    subsets: list[dict] = []
    for key, is_reg in (("train_data_dir", False), ("reg_data_dir", True)):
        root = args[key].value
        if root is None:
            continue
        local = paths.local(root)
        if local is None or not local.is_dir():
            why = "a Windows path, and this machine is not Windows" if local is None else "not a folder here"
            conv.depends(
                key,
                f'`{root}` is {why}: it becomes a dataset with layout = "kohya_folders", whose `N_class '
                "tokens` sub-folders `dbspec plan` lists where the images are; the converter could not check "
                "them against kohya's rules",
            )
            subsets.append({"image_dir": root, "is_reg": is_reg, "_root": args[key]})
            continue
        for sub in sorted(p for p in local.iterdir() if p.is_dir()):
            subset = _folder_subset(key, root, sub.name, is_reg, conv, args[key].source)
            if subset is not None:
                subsets.append(subset)
    return {"datasets": [{"subsets": subsets}]}


def metadata_config(args: Args, conv: Conversion) -> dict:
    """`--in_json` without a dataset config (train_network.py, sdxl_train.py, ...: `use_dreambooth_method =
    args.in_json is None`): one fine-tuning subset, image_dir = --train_data_dir, metadata_file = --in_json;
    --reg_data_dir is not read."""
    subset: dict[str, Any] = {
        "metadata_file": args["in_json"].value,
        "_cli": {"metadata_file": args["in_json"]},
    }
    if args["train_data_dir"].value is not None:
        subset["image_dir"] = args["train_data_dir"].value
        subset["_cli"]["image_dir"] = args["train_data_dir"]
    if "reg_data_dir" in args and args["reg_data_dir"].value is not None:
        conv.ignored(
            args["reg_data_dir"], "with --in_json kohya trains a fine-tuning dataset, which has no reg images"
        )
    return {"datasets": [{"subsets": [subset]}]}


def _folder_subset(
    key: str, root: str, name: str, is_reg: bool, conv: Conversion, source: str
) -> dict | None:
    legacy = Legacy(key=f"{key}/{name}", value=name, source="folder name")
    head, _, tail = name.partition("_")
    try:
        repeats = int(head)
    except ValueError:
        conv.ignored(legacy, "the folder name does not start with `<repeats>_` (e.g. `10_sks dog`)")
        return None
    if repeats < 1:
        conv.ignored(legacy, f"{repeats} repeats: kohya skips the folder")
        return None
    return {
        "image_dir": _join(root, name),
        "num_repeats": repeats,
        "class_tokens": tail,
        "is_reg": is_reg,
        "_folder": legacy,
    }


def _join(root: str, name: str) -> str:
    """kohya's `Path(root) / name`: an empty root is the current folder, so the name stays relative."""
    if root in ("", "."):
        return name
    stripped = root.rstrip("\\/")
    if not stripped:  # "/" (or "\\"): the root folder
        return root[:1] + name
    return stripped + ("\\" if "\\" in root and "/" not in root else "/") + name


def validate(config: dict, script: str, masked_loss: bool, conv: Conversion, source: str) -> list[str] | None:
    """ConfigSanitizer: the subset kind of each dataset; None when kohya would reject the config."""
    ok = _check_keys(config, ("general", "datasets"), "", conv, source)
    general = optional(config, "general", {})
    if not isinstance(general, dict):
        conv.invalid("general", general, source, "expected a table")
        return None
    datasets = optional(config, "datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
        conv.invalid("datasets", datasets, source, "expected an array of tables ([[datasets]])")
        return None
    kinds = [_kind(d, i, script, masked_loss, conv, source) for i, d in enumerate(datasets)]
    allowed_general = {
        **ks.DATASET_KEYS,
        **{
            k: v
            for kind in set(filter(None, kinds)) or {"dreambooth"}
            for k, v in ks.ascendable(kind).items()
        },
    }
    ok &= _check_table(general, allowed_general, "general", conv, source)
    for i, (dataset, kind) in enumerate(zip(datasets, kinds)):
        ok &= kind is not None and _check_dataset(dataset, i, kind, conv, source)
    return kinds if ok else None


def _kind(dataset: dict, i: int, script: str, masked_loss: bool, conv: Conversion, source: str) -> str | None:
    subsets = [s for s in optional(dataset, "subsets", []) if isinstance(s, dict)]
    if script == "train_db":  # ConfigSanitizer(dreambooth, no fine-tuning, controlnet=masked_loss)
        return "controlnet" if masked_loss else "dreambooth"
    if masked_loss and subsets and all("conditioning_data_dir" in s for s in subsets):
        return "controlnet"
    if subsets and all("metadata_file" in s for s in subsets):
        return "finetune"
    if all("metadata_file" not in s for s in subsets):
        return "dreambooth"
    conv.invalid(
        f"datasets[{i}].subsets",
        "...",
        source,
        "DreamBooth subset and fine tuning subset cannot be "
        "mixed in the same dataset (kohya ConfigSanitizer)",
    )
    return None


def _check_dataset(dataset: dict, i: int, kind: str, conv: Conversion, source: str) -> bool:
    allowed = {**ks.DATASET_KEYS, **ks.ascendable(kind), "subsets": None}
    ok = _check_table(dataset, allowed, f"datasets[{i}]", conv, source)
    subsets = optional(dataset, "subsets", [])
    if not isinstance(subsets, list) or not all(isinstance(s, dict) for s in subsets):
        conv.invalid(f"datasets[{i}].subsets", subsets, source, "expected an array of tables")
        return False
    for j, subset in enumerate(subsets):
        where = f"datasets[{i}].subsets[{j}]"
        ok &= _check_table(subset, ks.subset_keys(kind), where, conv, source, kind)
        for key in ks.REQUIRED[kind]:
            if key not in subset:
                conv.invalid(
                    f"{where}.{key}", None, source, f"required key not provided ({_kind_rule(kind)})"
                )
                ok = False
    return ok


def _check_table(
    table: dict, allowed: dict, where: str, conv: Conversion, source: str, kind: str = ""
) -> bool:
    ok = True
    for key, value in table.items():
        path = f"{where}.{key}" if where else key
        if key.startswith("_"):  # the converter's own annotations (legacy folder names)
            continue
        if key not in allowed:
            conv.invalid(path, value, source, f"extra keys not allowed here{_extra_hint(key, kind)}")
            ok = False
        elif allowed[key] is not None and ks.type_problem(value, allowed[key]):
            conv.invalid(path, value, source, ks.type_problem(value, allowed[key]))
            ok = False
    return ok


def _check_keys(config: dict, allowed: tuple, where: str, conv: Conversion, source: str) -> bool:
    extra = [k for k in config if k not in allowed]
    for key in extra:
        conv.invalid(
            key,
            config[key],
            source,
            "extra keys not allowed: the top level holds only [general] and [[datasets]]",
        )
    return not extra


def _extra_hint(key: str, kind: str) -> str:
    if kind == "controlnet" and key in ("is_reg", "class_tokens", "alpha_mask"):
        return (
            f": subsets with conditioning_data_dir (masked loss) are validated as ControlNet subsets, which "
            f"may not set `{key}` (kohya ConfigSanitizer; regularisation images cannot carry masks)"
        )
    if kind == "dreambooth" and key == "conditioning_data_dir":
        return (
            ": conditioning_data_dir (loss masks) needs --masked_loss, and then every subset of the dataset "
            "must have one (kohya ConfigSanitizer)"
        )
    if key in ("prior_loss_weight", "max_token_length", "debug_dataset"):
        return f": `{key}` is a command-line option only"
    return ""


def _kind_rule(kind: str) -> str:
    return {
        "controlnet": "masked-loss subsets need image_dir and conditioning_data_dir",
        "dreambooth": "DreamBooth subsets need image_dir",
        "finetune": "fine-tuning subsets need metadata_file",
    }[kind]


def resolve(config: dict, kinds: list[str], args: Args, source: str) -> tuple[KDataset, ...]:
    """Every dataset and subset value through kohya's fallback chain."""
    general = optional(config, "general", {})
    out = []
    for i, (dataset, kind) in enumerate(zip(optional(config, "datasets", []), kinds)):
        layers = [(dataset, f"datasets[{i}]"), (general, "general")]
        values = {k: _lookup(k, layers, args, source) for k in ks.DATASET_KEYS}
        subsets = []
        for j, subset in enumerate(optional(dataset, "subsets", [])):
            sub_layers = [(subset, f"datasets[{i}].subsets[{j}]"), *layers]
            sub_values = {k: _lookup(k, sub_layers, args, source) for k in ks.subset_keys(kind)}
            for key in ("is_reg", "alpha_mask", "class_tokens", "metadata_file", "conditioning_data_dir"):
                if key not in sub_values:  # not a key of this subset kind: kohya's dataclass default
                    sub_values[key] = Legacy(key=key, value=ks.DEFAULTS[key], source="default")
            if "_folder" in subset:
                for k in ("image_dir", "num_repeats", "class_tokens", "is_reg"):
                    sub_values[k] = attrs.evolve(subset["_folder"], value=subset[k])
            for k, legacy in subset.get("_cli", {}).items():  # --in_json / --train_data_dir
                sub_values[k] = legacy
            if "_root" in subset:  # the folder names give num_repeats and class_tokens at plan time
                for k in ("image_dir", "is_reg"):
                    sub_values[k] = attrs.evolve(subset["_root"], value=subset[k])
            subsets.append(KSubset(index=j, values=sub_values, kohya_root="_root" in subset))
        out.append(KDataset(index=i, kind=kind, values=values, subsets=tuple(subsets)))
    return tuple(out)


def _lookup(key: str, layers: list[tuple[dict, str]], args: Args, source: str) -> Legacy:
    for table, where in layers:
        if key in table and table[key] is not None:  # kohya's "first non-None" rule
            return Legacy(key=f"{where}.{key}", value=table[key], source=source)
    if key in args and args[key].value is not None:  # args: the namespace by dataset-config name
        return _from_argparse(key, args[key])
    return Legacy(key=key, value=ks.DEFAULTS[key], source="default")


def optional(table: dict, key: str, empty: Any) -> Any:
    """An optional kohya table or array; unknown keys were already reported by `validate`."""
    return table[key] if key in table else empty


def _from_argparse(key: str, legacy: Legacy) -> Legacy:
    """CLI strings that kohya's prepare_dataset_args turns into tuples."""
    value = legacy.value
    if key in ("resolution", "face_crop_aug_range") and isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            value = [int(p) for p in parts] if key == "resolution" else [float(p) for p in parts]
        except ValueError:
            value = legacy.value  # reported by the caller as invalid
        value = value[0] if key == "resolution" and isinstance(value, list) and len(value) == 1 else value
    return attrs.evolve(legacy, value=value)
