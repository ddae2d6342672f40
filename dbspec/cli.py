"""The `dbspec` command line. Exit codes: 0 ok, 1 the input has errors, 2 usage or internal error."""

from __future__ import annotations

import contextlib
import faulthandler

import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from dbspec.cli_common import (
    FormatOption,
    SetOption,
    StrictOption,
    check_format,
    emit,
    exit_code,
)
from dbspec.cli_convert import convert_app
from dbspec.families import family_list

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="DreamBooth fine-tuning from one declarative, compiler-checked TOML spec.",
)


@app.command()
def check(
    spec: Annotated[Path, typer.Argument(help="The spec file.")],
    set_: SetOption = None,
    fmt: FormatOption = "text",
    strict: StrictOption = False,
) -> None:
    """Validate a spec: every error at once, with positions and suggestions."""
    from dbspec.frontend import check_spec

    check_format(fmt)
    checked = check_spec(spec, str(spec), set_ or [])
    sources = checked.raw.sources if checked.raw else {}
    emit(checked.diagnostics, sources, fmt)
    code = exit_code(checked.diagnostics, strict)
    if code == 0 and fmt == "text":
        typer.echo(f"{spec}: ok")
    raise typer.Exit(code)


@app.command()
def upgrade(
    spec: Annotated[Path, typer.Argument(help="The spec file to rewrite in place.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the change; write nothing.")] = False,
    check_only: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when the file needs an upgrade.")
    ] = False,
) -> None:
    """Rewrite a spec to the current spec_version: renamed keys and the spec_version line change, every other
    byte (comments, layout, key order) stays. Prints the change as a unified diff."""
    from dbspec.cli_upgrade import upgrade_file

    raise typer.Exit(upgrade_file(spec, dry_run=dry_run, check_only=check_only))


TargetOption = Annotated[
    Optional[str],
    typer.Option(
        "--target",
        help="Compile for another machine: cpu, cuda:24GB, cuda:16GB:7.5, mps:32GB (default: this one).",
    ),
]


def resolve_target(target: str | None):
    from dbspec.compiler.target import parse_target, probe_target

    if target is None:
        return probe_target()
    try:
        return parse_target(target)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--target") from None


@app.command()
def plan(
    spec: Annotated[Path, typer.Argument(help="The spec file.")],
    set_: SetOption = None,
    target: TargetOption = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Write the plan as JSON to this path.")
    ] = None,
    explain_origins: Annotated[
        bool, typer.Option("--explain", help="Show where every value came from.")
    ] = False,
    fmt: FormatOption = "text",
    strict: StrictOption = False,
    download: Annotated[
        bool,
        typer.Option(
            "--download",
            help="Fetch hub models (base, VAE, evaluation and preview models) into the Hugging Face cache "
            "first.",
        ),
    ] = False,
) -> None:
    """Compile a spec into a resolved execution plan and show it; no model is loaded, no network used
    (unless --download)."""
    from rich.console import Console

    from dbspec.frontend import plan_spec
    from dbspec.plan.io import write_plan
    from dbspec.plan.summary import render_summary

    check_format(fmt)
    if download:
        _download_models(spec, set_ or [])
    planned = plan_spec(spec, resolve_target(target), str(spec), set_ or [])
    if download and _download_preview_model(planned.plan):
        planned = plan_spec(spec, resolve_target(target), str(spec), set_ or [])
    if planned.plan is None or fmt == "json":
        emit(planned.diagnostics, planned.sources, fmt)
    else:
        render_summary(planned.plan, Console(highlight=False, soft_wrap=True), explain=explain_origins)
    code = exit_code(planned.diagnostics, strict)
    if planned.plan is not None and json_out is not None and code == 0:
        write_plan(planned.plan, json_out)
        if fmt == "text":
            typer.echo(f"wrote {json_out}")
    raise typer.Exit(code)


def _download_models(spec: Path, overrides: list[str]) -> None:
    from dbspec.compiler.hub import DownloadError, download, is_local, weights_elsewhere
    from dbspec.frontend import check_spec

    checked = check_spec(spec, str(spec), overrides)
    if checked.spec is None:
        return  # plan_spec reports the spec's errors
    model, ev = checked.spec.model, checked.spec.evaluation
    wanted = [(model.base, model.revision), (model.vae, "main")]
    if {"clip_t", "clip_i"} & set(ev.metrics):
        wanted.append((ev.clip_model, "main"))
    if "dino" in ev.metrics:
        wanted.append((ev.dino_model, "main"))
    for name, revision in wanted:
        if name and not is_local(name, spec.parent):
            skip = weights_elsewhere(model) if name == model.base else ()
            try:
                typer.echo(f"downloaded {name} to {download(name, revision, skip)}")
            except DownloadError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None


def _download_preview_model(plan) -> bool:
    """Fetch the live-preview Tiny AutoEncoder when it is a hub id not in the cache (its id may be the
    family's default, known once the base model is planned); True when something was downloaded."""
    from dbspec.compiler.hub import DownloadError, download

    preview = plan.validation.preview if plan is not None else None
    if preview is None or preview.source != "hub" or preview.resolved:
        return False
    try:
        typer.echo(f"downloaded {preview.model} to {download(preview.model, preview.revision)}")
    except DownloadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    return True


@app.command()
def run(
    source: Annotated[
        Path, typer.Argument(help="A spec (.toml) or a plan written by `dbspec plan --json` (.json).")
    ],
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Move an output folder holding another run aside and start afresh."),
    ] = False,
    strict: StrictOption = False,
) -> None:
    """Train: compile the spec (or read the plan), show the plan, then run it."""
    from rich.console import Console

    from dbspec.plan.summary import render_summary

    rank = _launcher_rank()
    # Under a launcher (torchrun, accelerate launch) every process compiles the same plan; the first shows it.
    console = Console(highlight=False, soft_wrap=True, quiet=rank > 0)
    the_plan = _plan_for_run(source, set_ or [], strict)
    render_summary(the_plan, console)
    from dbspec.runtime.imports import startup_gc

    with contextlib.ExitStack() as run_scope:
        with startup_gc():  # no collection passes during the heavy imports, their objects frozen after
            from dbspec.runtime.imports import hidden_libraries

            # diffusers imports (and the run uses) only the optional libraries the plan calls
            run_scope.enter_context(hidden_libraries(the_plan))
            from dbspec.runtime.execute import RunError, execute
        try:
            result = execute(the_plan, overwrite=overwrite, resume=resume, console=console)
        except RunError as exc:
            where = f"\n  --> {exc.where}" if exc.where else ""
            hint = f"\n  = help: {exc.hint}" if exc.hint else ""
            who = f"process {rank}: " if rank > 0 or exc.peer else ""
            if exc.peer:
                _leave_report_to_failed_peer(f"note: {who}{exc.message}")
            typer.echo(f"error: {who}{exc.message}{where}{hint}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # typer would exit 130 without a word; the loop's own stop prints its step
            typer.echo(f"error: {_who(rank)}interrupted (SIGINT) outside a training step", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError as exc:  # typer would exit 1 without a word
            typer.echo(
                f"error: {_who(rank)}the program reading dbspec's output closed it ({exc}); "
                "the run stopped: run it again (with --resume if it saved a checkpoint) without piping its "
                "output into a command that quits early",
                err=True,
            )
            raise typer.Exit(1) from None
    if rank > 0:
        return
    if result.status == "interrupted":
        typer.echo(
            f"interrupted at step {result.steps}; checkpoint {result.last_checkpoint}\n"
            f"resume with: {resume_command(source, set_ or [], strict)}",
            err=True,
        )
        raise typer.Exit(130)
    typer.echo(
        f"finished {result.steps} steps in {result.seconds:.1f} s ({result.steps_per_second:.2f} steps/s)\n"
        f"weights: {result.final}\noutputs: {result.output}"
    )


PEER_GRACE_S = 10.0  # how long a process whose peer failed waits for the launcher to stop it


def _leave_report_to_failed_peer(note: str) -> None:
    """Another process failed (and said why): this one says only that it stops, then waits a bounded while for
    the launcher's SIGTERM. torchrun names as the root cause the process whose exit it observed first; exiting
    now, before the failed process finished exiting, would name this one."""
    typer.echo(note, err=True)
    time.sleep(PEER_GRACE_S)  # SIGTERM (the default action: exit) ends this sleep and the process
    raise typer.Exit(1)


def _who(rank: int) -> str:
    return f"process {rank}: " if rank > 0 else ""


def _launcher_rank() -> int:
    """This process's rank under torchrun / accelerate launch (they set RANK); 0 for a plain run."""
    rank = (os.environ.get("RANK") or "").strip()
    return int(rank) if rank.isdigit() else 0


def resume_command(source: Path, overrides: list[str], strict: bool) -> str:
    """The command that resumes this run: the same source and every --set (they are part of the plan, so
    leaving one out makes another plan, which --resume refuses), shell-quoted. Never --overwrite."""
    words = [
        "dbspec",
        "run",
        str(source),
        *(part for value in overrides for part in ("--set", value)),
        *(["--strict"] if strict else []),
        "--resume",
    ]
    return shlex.join(words)


def _plan_for_run(source: Path, overrides: list[str], strict: bool):
    from dbspec.frontend import plan_spec

    if source.suffix == ".json":
        from dbspec.plan.io import PlanFileError, read_plan

        if overrides:
            raise typer.BadParameter(
                "--set applies to specs; compile the spec again instead", param_hint="--set"
            )
        try:
            return read_plan(source)
        except PlanFileError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    planned = plan_spec(source, resolve_target(None), str(source), overrides)
    if planned.plan is None or exit_code(planned.diagnostics, strict):
        emit(planned.diagnostics, planned.sources, "text")
        raise typer.Exit(1)
    return planned.plan


@app.command()
def sample(
    source: Annotated[
        Path,
        typer.Argument(
            help="A run's output folder, a diffusers folder, a LoRA folder/file, or a "
            "single-file .safetensors."
        ),
    ],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt; repeat for several.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs and grid.png.")] = Path(
        "samples"
    ),
    base: Annotated[
        str, typer.Option(help="Base model for LoRA weights (default: from the run's plan.json).")
    ] = "",
    config: Annotated[
        str, typer.Option(help="Diffusers folder or hub id with configs, for single files.")
    ] = "",
    family: Annotated[
        str, typer.Option(help=f"{family_list(quote=False)}, for single files (default: read from the file).")
    ] = "",
    negative: Annotated[str, typer.Option(help="Negative prompt.")] = "",
    scheduler: Annotated[
        str,
        typer.Option(
            help="ddim, euler, euler_a, dpmpp, unipc, pndm or flow_euler; auto: flow_euler for flow-matching "
            "models (SD3), else ddim."
        ),
    ] = "auto",
    steps: Annotated[int, typer.Option(help="Inference steps.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.5,
    seed: Annotated[int, typer.Option(help="Seed of image 0 of every prompt (image i uses seed + i).")] = 0,
    images: Annotated[int, typer.Option(help="Images per prompt.")] = 1,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 512,
    checkpoint: Annotated[
        str,
        typer.Option(
            help="Sample a checkpoint of the run folder SOURCE: latest, best (checkpoints.select) or "
            "step-NNNNNN (default: its final weights)."
        ),
    ] = "",
    image: Annotated[
        list[Path],
        typer.Option(
            "--image",
            help="An image to refine (img2img models: the SDXL refiner); repeat for several. One --prompt "
            "for all, or one per image.",
        ),
    ] = [],  # noqa: B006 - typer reads the default
    strength: Annotated[float, typer.Option(help="img2img strength for --image (the refiner).")] = 0.3,
    aesthetic_score: Annotated[float, typer.Option(help="The refiner's aesthetic score.")] = 6.0,
    negative_aesthetic_score: Annotated[
        float, typer.Option(help="The refiner's aesthetic score of the negative branch.")
    ] = 2.5,
) -> None:
    """Generate images from a finished output: PNGs and a grid (the SDXL refiner: refined --image files)."""
    from dbspec.plan.model import RefinePlan, StepRange, ValidationPlan

    if scheduler not in ("auto", "ddim", "euler", "euler_a", "dpmpp", "unipc", "pndm", "flow_euler"):
        raise typer.BadParameter(f"unknown scheduler {scheduler!r}", param_hint="--scheduler")
    from dbspec.families import FAMILIES

    if family and family not in FAMILIES:
        raise typer.BadParameter(
            f"family must be {family_list(quote=False)}, not {family!r}", param_hint="--family"
        )
    refine = None
    if image:
        if len(prompt) not in (1, len(image)):
            raise typer.BadParameter(
                f"{len(prompt)} prompts for {len(image)} images: give one prompt, or one per image",
                param_hint="--prompt",
            )
        if not 0 < strength <= 1:
            raise typer.BadParameter(f"strength must be in (0, 1], not {strength}", param_hint="--strength")
        refine = RefinePlan(
            images=tuple(str(p.resolve()) for p in image),
            captions=tuple(prompt * len(image) if len(prompt) == 1 else prompt),
            strength=strength,
            aesthetic_score=aesthetic_score,
            negative_aesthetic_score=negative_aesthetic_score,
        )
    settings = ValidationPlan(
        refine=refine,
        prompts=tuple(prompt),
        negative_prompt=negative,
        steps=StepRange(every=0, end=0),
        scheduler=scheduler,
        inference_steps=steps,
        guidance=guidance,
        images_per_prompt=images,
        seed=seed,
        size=(size, size),
    )
    from dbspec.runtime.sample import SampleError, SampleRequest
    from dbspec.runtime.sample import sample as run_sample

    try:
        paths = run_sample(
            SampleRequest(
                source=source,
                base=base,
                config=config,
                family=family or _single_file_family(source, base),
                settings=settings,
                checkpoint=checkpoint,
            ),
            out,
        )
    except (SampleError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {len(paths) - 1} images and {paths[-1]}")


def _single_file_family(source: Path, base: str) -> str:
    """The family a full single-file checkpoint (the source, or a LoRA's base) says by its tensor names; ""
    when neither is one (a diffusers folder or a run's plan says it instead)."""
    from dbspec.compiler.modelinfo import ModelFileError, inspect_model

    for path in (source, Path(base) if base else None):
        if path is None or path.suffix != ".safetensors" or not path.is_file():
            continue
        try:
            facts = inspect_model(str(path.resolve()), path.resolve().parent)
        except ModelFileError:
            continue
        if facts is not None and facts.family != "unknown":
            return facts.family
    return ""


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="A run's output folder (output.dir; it holds plan.json).")],
) -> None:
    """Write OUT/report.html: plan summary, loss/LR and metric plots (best checkpoint marked), validation
    grids per step, dataset images with buckets and captions; one self-contained file."""
    from dbspec.report import ReportError, write_report

    try:
        path = write_report(out)
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {path}")


@app.command()
def masks(
    images: Annotated[Path, typer.Argument(help="The image folder.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the masks (use it as a dataset's masks).")
    ],
    from_alpha: Annotated[
        bool,
        typer.Option(
            "--from-alpha",
            help="Masks from each image's alpha channel (default: all white, i.e. train everywhere).",
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace masks that exist.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", help="Also sub-folders.")] = False,
) -> None:
    """Write loss masks for a folder: all white (to edit), or from the alpha channel."""
    from dbspec.masks import write_masks

    written, problems = write_masks(
        images, out, "alpha" if from_alpha else "white", overwrite=overwrite, recursive=recursive
    )
    if problems:
        emit(tuple(problems), {}, "text")
    typer.echo(f"wrote {len(written)} masks to {out}")
    raise typer.Exit(1 if any(d.severity == "error" for d in problems) else 0)


@app.command()
def schema(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON Schema.")] = Path(
        "schemas/dbspec.schema.json"
    ),
    docs: Annotated[
        Optional[Path], typer.Option("--docs", help="Also write the Markdown spec reference here.")
    ] = None,
    errors: Annotated[
        Optional[Path],
        typer.Option(
            "--errors",
            help="Also write the diagnostic code reference (docs/errors.md, from dbspec/codes.py) here.",
        ),
    ] = None,
) -> None:
    """Write the JSON Schema (and the spec and error references) generated from the spec \
model and code table."""
    from dbspec.spec.reference import errors_markdown, reference_markdown
    from dbspec.spec.schema import schema_text
    from dbspec.util.atomic import write_text_atomic

    write_text_atomic(output, schema_text())
    typer.echo(f"wrote {output}")
    if docs is not None:
        write_text_atomic(docs, reference_markdown())
        typer.echo(f"wrote {docs}")
    if errors is not None:
        write_text_atomic(errors, errors_markdown())
        typer.echo(f"wrote {errors}")


@app.command()
def explain(
    key: Annotated[
        str,
        typer.Argument(
            help="A key such as optimizer.lr or datasets.repeats, or a diagnostic code such as DBS102"
        ),
    ],
) -> None:
    """Show a key's type, default, meaning and an example, or what a diagnostic code means."""
    from dbspec.spec.reference import explain as explain_key
    from dbspec.spec.reference import explain_code

    text, found = explain_code(key) if re.fullmatch(r"(?i)dbs\d{3}", key) else explain_key(key)
    typer.echo(text)
    raise typer.Exit(0 if found else 1)


@app.command()
def env(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable, for bug reports.")] = False,
) -> None:
    """Show dbspec, Python, torch (build, devices, bf16) and library versions; warn about \
known-bad combinations."""
    import json

    from dbspec.envreport import render_text, report

    try:
        from dbspec.runtime.probe import torch_facts
    except ImportError:  # dbspec check and plan work without torch
        facts: dict = {"installed": False}
    else:
        facts = torch_facts()
    data = report(facts)
    typer.echo(json.dumps(data, indent=2) if as_json else render_text(data))


@app.command()
def tokens(
    model: Annotated[
        str, typer.Argument(help="builtin:NAME, a diffusers folder, or a hub id in the local cache.")
    ],
    count: Annotated[int, typer.Option("--count", help="Show this many (0: all).")] = 30,
    min_length: Annotated[int, typer.Option("--min-length", help="Shortest word listed.")] = 3,
    revision: Annotated[str, typer.Option("--revision", help="Hub revision of a hub id.")] = "main",
    probe: Annotated[
        bool, typer.Option("--probe", help="Also rank by the text encoders' embeddings (needs torch).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List rare identifiers: words that are one token in every tokenizer of MODEL, not common words, \
rarest first (latest BPE merge; with --probe, least like any common word's embedding)."""
    from dbspec.cli_tokens import list_tokens

    raise typer.Exit(
        list_tokens(
            model, count=count, min_length=min_length, revision=revision, probe=probe, as_json=as_json
        )
    )


app.add_typer(convert_app, name="convert")


def main() -> None:
    """Console entry point: no traceback for bad input; internal errors exit 2 with a short report. A crash
    in native code (a segfault or abort in torch, gloo, a kernel) prints every thread's Python stack
    (faulthandler) instead of ending the process without a word."""
    with contextlib.suppress(ValueError, OSError):  # a stderr without a file descriptor (captured)
        faulthandler.enable(all_threads=True)
    try:
        app()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        typer.echo(f"error: {_who(_launcher_rank())}interrupted (SIGINT)", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if os.environ.get("DBSPEC_DEBUG"):
            raise
        rank = _launcher_rank()
        who = f"process {rank}: " if rank > 0 else ""
        typer.echo(
            f"internal error: {who}{type(exc).__name__}: {exc}\n"
            "this is a dbspec bug; rerun with DBSPEC_DEBUG=1 for a traceback and report it",
            err=True,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
