"""kohya's argument namespace from its three channels: CLI > --config_file > argparse defaults.

`read_config_from_file`: ".toml" is appended when missing; each top-level table is flattened one level
(section names are ignored; a nested sub-table would become a dict value, i.e. it is lost); the values go into
the namespace before argparse runs again, so they bypass argparse's types, choices and unknown-key checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import tomli

from dbspec.convert.common.argv import Arg, parse_argv
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya import schema as ks
from dbspec.convert.kohya.args import SCRIPTS, arg_table, script_of
from dbspec.convert.common.launcher import InputError, launcher_options, read_command, report_joined

# Keys the bmaltais kohya_ss GUI writes into config files; kohya ignores them.
GUI_KEYS = frozenset(
    {
        "epoch",
        "noise_offset_type",
        "sdxl",
        "lr_restart_cycles",
        "LoRA_type",
        "model_list",
        "lora_network_weights",
        "sdxl_checkbox",
        "sample_every_n_steps_",
        "save_as_bool",
        "stop_text_encoder_training_pct",
        "train_on_input",
        "use_wandb",
        "dataset_config_file",
        "additional_parameters",
        "lr_warmup",
        "max_resolution",
        "sdxl_no_half_vae",
        "num_cpu_threads_per_process",
    }
)


@attrs.frozen(kw_only=True)
class KohyaRequest:
    command: str | None = None  # a file, "-" or the command text
    config_file: Path | None = None
    dataset_config: Path | None = None
    train_data_dir: str | None = None
    reg_data_dir: str | None = None
    script: str | None = None
    cwd: Path


@attrs.frozen(kw_only=True)
class KohyaArgs:
    script: str
    args: dict[str, Legacy]  # every argument of the script, effective (and config_file dataset fallbacks)
    dataset_args: dict[str, Legacy]  # the dataset config's last fallback, by dataset-config key (below)
    launcher: dict[str, Legacy]
    inputs: tuple[str, ...]  # what was read, for the spec's header


def kohya_args(req: KohyaRequest, conv: Conversion) -> KohyaArgs:
    cli: dict[str, Any] = {}
    launcher: dict[str, Legacy] = {}
    inputs: list[str] = []
    script = req.script
    if req.command is not None:
        command, label = read_command(req.command, req.cwd, SCRIPTS)
        inputs.append(label if label == "the command text" else f"command {label}")
        launcher = launcher_options(command)
        report_joined(command, label, conv)
        script = _script(command.script, req.script, conv)
        table = arg_table(script)
        cli = _parse_cli(command.args, table, conv)
    script = script or _guess_script(conv)
    table = arg_table(script)
    overrides = {
        k: v
        for k, v in (
            ("dataset_config", req.dataset_config),
            ("train_data_dir", req.train_data_dir),
            ("reg_data_dir", req.reg_data_dir),
        )
        if v is not None
    }
    config_path = req.config_file or _cli_config_path(cli, req.cwd)
    config = _read_config_file(config_path, table, conv) if config_path else {}
    if config_path:
        inputs.append(f"config_file {config_path}")
    args = {name: Legacy(key=name, value=arg.default, source="default") for name, arg in table.items()}
    args.update({k: Legacy(key=k, value=v, source="config_file") for k, v in config.items()})
    args.update({k: Legacy(key=k, value=v, source="command line") for k, v in cli.items()})
    args.update({k: Legacy(key=k, value=str(v), source="dbspec option") for k, v in overrides.items()})
    if args["caption_extention"].value is not None:  # prepare_dataset_args copies the legacy spelling over
        args["caption_extension"] = attrs.evolve(args["caption_extention"], key="caption_extension")
    if args["dataset_config"].value is not None:
        inputs.append(f"dataset_config {args['dataset_config'].value}")
    return KohyaArgs(
        script=script,
        args=args,
        dataset_args=dataset_fallbacks(args, [*config, *(k for k in table if k not in config)]),
        launcher=launcher,
        inputs=tuple(inputs),
    )


def dataset_fallbacks(args: dict[str, Legacy], order: list[str]) -> dict[str, Legacy]:
    """config_util.BlueprintGenerator: every attribute of the parsed namespace is the last fallback of every
    dataset and subset value, under its dataset-config name (train_batch_size -> batch_size, dataset_repeats
    -> num_repeats). The namespace holds the config_file keys first (file order), then the options argparse
    added; a later attribute with the same dataset-config name wins, as in kohya's dict comprehension."""
    renamed = {argparse: config for config, argparse in ks.ARGPARSE_NAME.items()}
    out: dict[str, Legacy] = {}
    for name in order:
        out[renamed[name] if name in renamed else name] = args[name]
    return out


def _script(from_command: str, requested: str | None, conv: Conversion) -> str:
    if not from_command:
        return requested or ""
    script = script_of(from_command)
    if script is None:
        raise InputError(
            f"`{from_command}` is not one of kohya's DreamBooth scripts "
            f"({', '.join(s + '.py' for s in SCRIPTS)})"
        )
    if requested and requested != script:
        conv.warn("DBS405", f"--script {requested} ignored: the command runs {from_command}", "script")
    return script


def _guess_script(conv: Conversion) -> str:
    conv.warn(
        "DBS407", "no script named: converted as train_db.py (pass --script to choose another)", "script"
    )
    return "train_db"


def _parse_cli(tokens: tuple[str, ...], table: dict[str, Arg], conv: Conversion) -> dict[str, Any]:
    parsed = parse_argv(tokens, table)
    for option, text, why in parsed.problems:
        key = option.lstrip("-")
        if why.startswith("unrecognized") or why.startswith("ambiguous"):
            conv.unsupported(
                Legacy(key=key, value=text, source="command line"),
                f"{why} for this script (argparse would stop; if your sd-scripts version has it, "
                "dbspec does not know what it does)",
            )
        else:
            conv.invalid(key, text, "command line", why)
    return parsed.values


def _cli_config_path(cli: dict[str, Any], cwd: Path) -> Path | None:
    if "config_file" not in cli or not cli["config_file"]:
        return None
    name = cli["config_file"]
    path = Path(name if name.endswith(".toml") else name + ".toml").expanduser()
    return path if path.is_absolute() else cwd / path


def _read_config_file(path: Path, table: dict[str, Arg], conv: Conversion) -> dict[str, Any]:
    try:
        data = tomli.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomli.TOMLDecodeError) as exc:
        raise InputError(f"cannot read the config file `{path}`: {exc}") from None
    flat: dict[str, Any] = {}
    for section, body in data.items():
        for key, value in body.items() if isinstance(body, dict) else [(section, body)]:
            flat[key] = value
    return {k: v for k, v in flat.items() if _config_value_ok(k, v, table, conv)}


def _config_value_ok(key: str, value: Any, table: dict[str, Arg], conv: Conversion) -> bool:
    legacy = Legacy(key=key, value=value, source="config_file")
    if key not in table and key in _DATASET_FALLBACKS:
        return _fallback_ok(legacy, conv)
    if key not in table:
        if key not in GUI_KEYS:
            conv.ignored(
                legacy, "not an option of this script; kohya keeps unknown config_file keys silently"
            )
        else:
            conv.inert(legacy, "a kohya_ss GUI key; kohya ignores it")
        return False
    if isinstance(value, dict):
        conv.ignored(legacy, "a nested table: kohya flattens config files one level only, so this is lost")
        return False
    problem = config_type_problem(table[key], value)
    if problem:
        conv.invalid(key, value, "config_file", problem)
        return False
    return True


# Keys kohya's dataset blueprint looks up in the namespace although they are no option of the script: every
# dataset and subset key, and the fine-tuning scripts' dataset_repeats (num_repeats).
_DATASET_FALLBACKS = frozenset({*ks.DEFAULTS, *ks.ARGPARSE_NAME.values()})


def _fallback_ok(legacy: Legacy, conv: Conversion) -> bool:
    """A config_file key that is a dataset setting: kohya checks it with the dataset schema's type
    (ConfigSanitizer's argparse schema) and uses it wherever the dataset config leaves the value unset."""
    names = {argparse: config for config, argparse in ks.ARGPARSE_NAME.items()}
    name = names[legacy.key] if legacy.key in names else legacy.key
    typed = {**ks.DATASET_KEYS, **ks.ascendable("dreambooth")}
    if isinstance(legacy.value, dict) and name != "custom_attributes":
        conv.ignored(legacy, "a nested table: kohya flattens config files one level only, so this is lost")
        return False
    problem = ks.type_problem(legacy.value, typed[name]) if name in typed else ""
    if problem:
        conv.invalid(legacy.key, legacy.value, legacy.source, f"{problem} (kohya's dataset schema)")
        return False
    return True


def config_type_problem(arg: Arg, value: Any) -> str:
    """What kohya would trip over later: config_file values skip argparse's type conversion."""
    if arg.name in ("resolution", "face_crop_aug_range"):
        return (
            ""
            if isinstance(value, str)
            else 'must be a string such as "512" or "512,768" (kohya splits it on ",")'
        )
    expected = {
        "flag": (bool,),
        "int": (int,),
        "float": (int, float),
        "str": (str,),
        "list": (list,),
        "int_or_float": (int, float),
    }[arg.kind]
    if arg.name == "text_encoder_lr" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return ""  # kohya accepts one number for both text encoders in a config file
    if isinstance(value, bool) and arg.kind != "flag" or not isinstance(value, expected):
        return f"expected {arg.kind.replace('_', ' ')}, got {type(value).__name__}"
    if arg.kind == "list" and not all(isinstance(v, (str, int, float)) for v in value):
        return "expected a list of strings"
    if arg.name == "max_token_length" and value == 75:
        return (
            ""  # argparse would refuse it, but from a config file kohya uses 75 + 2 = 77 tokens: one window
        )
    if arg.choices and value not in arg.choices:
        return f"must be one of {', '.join(repr(c) for c in arg.choices if c is not None)}"
    return ""
