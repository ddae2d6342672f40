"""The launcher part of a command (`accelerate launch --num_processes 2 ...`, `python`),
and reading inputs."""

from __future__ import annotations

import sys
from pathlib import Path

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.shell import Command, split_command

_VALUED = {
    "num_processes",
    "num_machines",
    "mixed_precision",
    "gpu_ids",
    "num_cpu_threads_per_process",
    "main_process_port",
    "main_process_ip",
    "machine_rank",
    "dynamo_backend",
    "config_file",
    "gradient_accumulation_steps",
    "rdzv_backend",
    "same_network",
    "deepspeed_config_file",
    "zero_stage",
}


class InputError(Exception):
    """A legacy input file cannot be read (reported as DBS401)."""


def read_command(spec: str, cwd: Path, scripts: tuple[str, ...] = ()) -> tuple[Command, str]:
    """A command from a file path, `-` (standard input) or the command text itself; and its label.
    `scripts`: the script names the converter knows (the first launch of one of them is the command)."""
    if spec == "-":
        return split_command(sys.stdin.read(), scripts=scripts), "standard input"
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else cwd / path
    if _is_file(path) or not any(c.isspace() for c in spec.strip()):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the command file `{spec}`: {exc}") from None
        windows = {".bat": True, ".cmd": True, ".sh": False}.get(path.suffix.lower())
        return split_command(text, windows, scripts), str(spec)
    return split_command(spec, scripts=scripts), "the command text"


def report_joined(command: Command, label: str, conv: Conversion) -> None:
    """Option lines that followed the command without a line continuation: joined, and said once; and
    later launches of known scripts that were not converted."""
    if command.others:
        conv.warn(
            "DBS407",
            f"{label} launches {1 + len(command.others)} training scripts: the first, {command.script}, was "
            f"converted; not converted: {', '.join(command.others)}",
            help="convert each launch on its own (a file of its own, or the command text)",
        )
    if not command.joined:
        return
    names = ", ".join(command.joined)
    conv.warn(
        "DBS407",
        f"{len(command.joined)} line(s) of {label} start with an option but do not continue the "
        f"{command.script or 'command'} line (no `\\` or `^` at the end of the line before): a shell would "
        "run each as a command of its own and the script would not see them; the converter assumed they "
        f"belong to the command and joined them: {names}",
        help="add the line continuations to the legacy script, or check that these options were meant",
    )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a command text too long to be a file name
        return False


_TORCHRUN_VALUED = {
    "nproc_per_node",
    "nnodes",
    "node_rank",
    "master_addr",
    "master_port",
    "rdzv_backend",
    "rdzv_endpoint",
    "rdzv_id",
    "rdzv_conf",
    "max_restarts",
    "monitor_interval",
    "start_method",
    "role",
    "log_dir",
    "redirects",
    "tee",
    "local_addr",
}
_LAUNCHERS = {  # the word after which launcher options start -> (name in reports, its valued options)
    "launch": ("accelerate launch", _VALUED),
    "accelerate.commands.launch": ("accelerate launch", _VALUED),
    "torchrun": ("torchrun", _TORCHRUN_VALUED),
    "torch.distributed.run": ("torchrun", _TORCHRUN_VALUED),
    "torch.distributed.launch": ("torchrun", _TORCHRUN_VALUED),
}


def launcher_options(command: Command) -> dict[str, Legacy]:
    """`accelerate launch` (or `python -m accelerate.commands.launch`) options, keyed `accelerate launch
    --name`; torchrun's (or `python -m torch.distributed.run`'s), keyed `torchrun --name`. Option names are
    normalised to underscores: `nproc-per-node` is `nproc_per_node`."""
    tokens = list(command.launcher)
    start = next((i for i, t in enumerate(tokens) if t.split("/")[-1] in _LAUNCHERS), None)
    out: dict[str, Legacy] = {}
    if start is None:
        return out
    label, valued = _LAUNCHERS[tokens[start].split("/")[-1]]
    i = start + 1
    while i < len(tokens):
        name, eq, value = tokens[i].lstrip("-").partition("=")
        name = name.replace("-", "_")
        if not eq and name in valued and i + 1 < len(tokens):
            value, i = tokens[i + 1], i + 1
        out[name] = Legacy(
            key=f"{label} --{name}",
            value=value if (eq or name in valued) else True,
            source="command line",
        )
        i += 1
    return out


def report_launcher(options: dict[str, Legacy], conv: Conversion, script_sets_precision: bool) -> None:
    """Every launcher option's fate. The script's own --mixed_precision wins over accelerate's (kohya always
    passes one; diffusers scripts only when given)."""
    for name, legacy in options.items():
        if name in ("num_processes", "nproc_per_node", "nnodes", "num_machines") and str(
            legacy.value
        ) not in ("1", "True"):
            conv.differs(
                legacy,
                f"{legacy.value} processes: dbspec takes the process count from the machine it "
                "runs on (`dbspec plan --target`); per-process batch size and step counts are kept",
            )
        elif name == "multi_gpu":
            conv.differs(legacy, "dbspec takes the process count from the machine it runs on")
        elif name == "mixed_precision" and not script_sets_precision:
            conv.record(legacy, "mapped", "precision.mixed")
        elif name == "mixed_precision":
            conv.inert(legacy, "the script passes its own --mixed_precision, which wins over accelerate's")
        else:
            conv.inert(legacy, "launcher setting: no effect on what trains")
