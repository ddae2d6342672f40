"""Progress bars and metrics: a rich bar on the console, JSONL and TensorBoard events in the output folder,
and Weights & Biases when the plan asks (runtime/wandb_log.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dbspec.plan.model import LoggingPlan
from dbspec.runtime.wandb_log import WandbSink
from dbspec.util.atomic import write_text_atomic


@contextlib.contextmanager
def cache_progress(console: Console | None):
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=True,
    ) as progress:
        yield progress


class TrainProgress:
    """Step, loss, LR, it/s and ETA on one line."""

    def __init__(self, progress: Progress, total: int, completed: int):
        self._progress = progress
        self._task = progress.add_task(
            "training", total=total, completed=completed, loss=float("nan"), lr=0.0
        )

    def update(self, *, step: int, loss: float, lr: float) -> None:
        self._progress.update(self._task, completed=step, loss=loss, lr=lr)


@contextlib.contextmanager
def train_progress(console: Console | None, total: int, completed: int):
    columns = (
        TextColumn("step"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console or Console(stderr=True)) as progress:
        yield TrainProgress(progress, total, completed)


class MetricsLog:
    """metrics.jsonl (appended across resumes), TensorBoard events under <out>/logs and, with `logging.wandb`,
    the same values in a W&B run (`wandb_config`: its config)."""

    def __init__(
        self,
        out: Path,
        plan: LoggingPlan,
        start_step: int,
        enabled: bool = True,
        wandb_config: dict | None = None,
    ):
        self.every = plan.every if enabled else 0
        self._jsonl = None
        self._tb = None
        self._wandb: WandbSink | None = None
        if not enabled:  # processes other than the main one log nothing
            return
        out.mkdir(parents=True, exist_ok=True)
        keep_rows_up_to(out / "metrics.jsonl", start_step)
        self._jsonl = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        if plan.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out / "logs"), purge_step=start_step + 1)
        if plan.wandb:
            self._wandb = WandbSink(out, plan, wandb_config or {})

    def write(self, step: int, values: dict[str, float]) -> None:
        if self._jsonl is None or (step % self.every and step != 1):
            return
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"train/{name}", value, step)
        if self._wandb is not None:
            self._wandb.scalars(step, {f"train/{name}": value for name, value in values.items()})

    def evaluation(self, step: int, row: dict) -> None:
        """One evaluation row, whatever `every` says: {"step", "eval_loss", "eval_loss_bands", "clip_t",
        "clip_i", "dino"}, keys only for the metrics that ran (the contract `dbspec report` reads)."""
        if self._jsonl is None or not row:
            return
        self._jsonl.write(json.dumps({"step": step, **row}) + "\n")
        self._jsonl.flush()
        scalars = {
            f"eval/{name}" + (f"_{band}" if isinstance(value, list) else ""): v
            for name, value in row.items()
            for band, v in enumerate(value if isinstance(value, list) else [value])
        }
        if self._tb is not None:
            for name, v in scalars.items():
                self._tb.add_scalar(name, v, step)
        if self._wandb is not None:
            self._wandb.scalars(step, scalars)

    def images(self, step: int, grid: Path) -> None:
        if self._tb is not None and grid.exists():
            self._tb.add_image(
                "validation", np.asarray(Image.open(grid).convert("RGB")), step, dataformats="HWC"
            )
        if self._wandb is not None and grid.exists():
            self._wandb.image(step, "validation", grid)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None


def keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the rows a resumed run will log again (steps after its checkpoint) and a row torn by a kill, so
    metrics.jsonl holds each step once. Rewritten atomically; untouched when nothing needs dropping."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return
    kept = [line for line in lines if _row_step(line) is not None and _row_step(line) <= step]
    if len(kept) == len(lines) and all(line.endswith("\n") for line in lines):
        return
    write_text_atomic(path, "".join(line if line.endswith("\n") else line + "\n" for line in kept))


def _row_step(line: str) -> int | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row["step"] if isinstance(row, dict) and type(row.get("step")) is int else None
