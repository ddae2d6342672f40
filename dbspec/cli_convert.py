"""`dbspec convert`: kohya, diffusers and SimpleTuner configs into a spec (logic in dbspec/convert/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dbspec.cli_common import FormatOption, SetOption, check_format

convert_app = typer.Typer(
    no_args_is_help=True,
    help="Convert kohya, diffusers or SimpleTuner configs into a spec. "
    "Exit 0 converted, 1 the legacy input is invalid or cannot be expressed, 2 usage error.",
)
OutOption = Annotated[
    Path, typer.Option("--output", "-o", help="The spec to write (paths in it are relative to it).")
]
ReportOption = Annotated[bool, typer.Option("--report", help="Print what became of every legacy key.")]
AllowOption = Annotated[
    bool,
    typer.Option(
        "--allow-unsupported",
        help="Convert anyway, leaving out settings dbspec cannot express (each is reported).",
    ),
]
CwdOption = Annotated[
    Optional[Path],
    typer.Option(
        "--cwd", help="The folder the legacy tool ran in: its relative paths resolve there (default: here)."
    ),
]
CommandOption = Annotated[
    Optional[str],
    typer.Option(
        "--command",
        help="The launch command: a .sh/.bat/.txt file, the command text, or - for standard input.",
    ),
]


def _convert(converter, output: Path, report: bool, fmt: str, overrides: list[str] | None) -> None:
    from dbspec.convert import execute

    check_format(fmt)
    raise typer.Exit(execute(converter, output, report=report, fmt=fmt, overrides=overrides or ()))


@convert_app.command("kohya")
def convert_kohya(
    output: OutOption,
    dataset_config: Annotated[
        Optional[Path], typer.Option("--dataset-config", help="kohya dataset TOML/JSON.")
    ] = None,
    config_file: Annotated[
        Optional[Path], typer.Option("--config-file", help="kohya --config_file TOML.")
    ] = None,
    command: CommandOption = None,
    train_data_dir: Annotated[
        Optional[str], typer.Option("--train-data-dir", help="Folders named `10_sks dog`.")
    ] = None,
    reg_data_dir: Annotated[
        Optional[str], typer.Option("--reg-data-dir", help="Regularisation folders `1_dog`.")
    ] = None,
    script: Annotated[
        Optional[str],
        typer.Option(
            "--script",
            help="train_db, sdxl_train, train_network, sdxl_train_network, flux_train_network or "
            "sd3_train_network (when the command does not name it).",
        ),
    ] = None,
    cwd: CwdOption = None,
    report: ReportOption = False,
    allow_unsupported: AllowOption = False,
    set_: SetOption = None,
    fmt: FormatOption = "text",
) -> None:
    """kohya-ss sd-scripts: dataset config, --config_file, command line and folder names, \
kohya's precedence."""
    from dbspec.convert.kohya.convert import convert_kohya as run_kohya
    from dbspec.convert.kohya.args import SCRIPTS
    from dbspec.convert.kohya.inputs import KohyaRequest

    if script is not None and script.removesuffix(".py") not in SCRIPTS:
        raise typer.BadParameter(f"choose one of {', '.join(SCRIPTS)}", param_hint="--script")
    if not any((dataset_config, config_file, command, train_data_dir)):
        raise typer.BadParameter(
            "give at least one of --command, --config-file, --dataset-config, --train-data-dir"
        )
    req = KohyaRequest(
        command=command,
        config_file=config_file,
        dataset_config=dataset_config,
        train_data_dir=train_data_dir,
        reg_data_dir=reg_data_dir,
        script=script.removesuffix(".py") if script else None,
        cwd=cwd or Path.cwd(),
    )
    _convert(lambda: run_kohya(req, output, allow_unsupported), output, report, fmt, set_)


@convert_app.command("diffusers")
def convert_diffusers(
    output: OutOption,
    command: CommandOption = None,
    cwd: CwdOption = None,
    report: ReportOption = False,
    allow_unsupported: AllowOption = False,
    set_: SetOption = None,
    fmt: FormatOption = "text",
) -> None:
    """diffusers train_dreambooth.py, train_dreambooth_lora.py, \
train_dreambooth_lora_sdxl.py, train_dreambooth_lora_flux.py, train_dreambooth_lora_sd3.py, \
train_dreambooth_sd3.py command lines."""
    from dbspec.convert.diffusers.convert import DiffusersRequest
    from dbspec.convert.diffusers.convert import convert_diffusers as run_diffusers

    if command is None:
        raise typer.BadParameter("give the launch command: --command train.sh (or - for standard input)")
    req = DiffusersRequest(command=command, cwd=cwd or Path.cwd())
    _convert(lambda: run_diffusers(req, output, allow_unsupported), output, report, fmt, set_)


@convert_app.command("simpletuner")
def convert_simpletuner(
    output: OutOption,
    config: Annotated[Path, typer.Option("--config", help="SimpleTuner config.json (or config.toml).")],
    backend: Annotated[
        Optional[Path],
        typer.Option("--backend", help="multidatabackend.json (default: config.json's data_backend_config)."),
    ] = None,
    cwd: CwdOption = None,
    report: ReportOption = False,
    allow_unsupported: AllowOption = False,
    set_: SetOption = None,
    fmt: FormatOption = "text",
) -> None:
    """SimpleTuner config.json + multidatabackend.json (SD 1.x, SD 2.x, SDXL)."""
    from dbspec.convert.simpletuner.convert import SimpleTunerRequest
    from dbspec.convert.simpletuner.convert import convert_simpletuner as run_simpletuner

    req = SimpleTunerRequest(config=config, backend=backend, cwd=cwd or Path.cwd())
    _convert(lambda: run_simpletuner(req, output, allow_unsupported), output, report, fmt, set_)
