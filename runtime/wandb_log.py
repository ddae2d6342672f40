"""Weights & Biases logging (`[logging] wandb`): the scalars and validation grids TensorBoard gets, at the
same steps, from the main process only (MetricsLog holds the sink). One W&B run per output folder: its id is
kept in <out>/wandb-run.json, so a resumed run continues it (`resume="allow"`). wandb is imported only here,
and only when the plan asks for it."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from dbspec.plan.io import plan_to_data
from dbspec.plan.model import LoggingPlan, Plan
from dbspec.util.atomic import write_text_atomic

RUN_FILE = "wandb-run.json"


class WandbError(Exception):
    """W&B logging cannot start (wandb missing, or its run could not be opened)."""


def require_wandb() -> None:
    """Stop before the run starts (not at its first log) when wandb is missing (DBS379)."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise WandbError(
            "DBS379: logging.wandb = true but the wandb package is not installed; pip install wandb (or "
            "pip install 'dbspec[wandb]'), or set logging.wandb = false"
        )


def wandb_config(plan: Plan) -> dict[str, Any]:
    """The run's W&B config: the plan's data (what `dbspec plan --json` shows), without the per-value
    origins and with each dataset's image list reduced to its count (a config is for comparing runs)."""
    data = plan_to_data(plan)
    for key in ("origins", "warnings"):
        data.pop(key, None)
    for d in data.get("datasets", ()):
        for key in ("images", "skipped"):
            if isinstance(d.get(key), list):
                d[key] = len(d[key])
    return json.loads(json.dumps(data))


def stored_run_id(out: Path) -> str:
    try:
        data = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    run_id = data.get("id") if isinstance(data, dict) else None
    return run_id if isinstance(run_id, str) else ""


class WandbSink:
    """One W&B run, opened (or continued) in <out>/wandb."""

    def __init__(self, out: Path, plan: LoggingPlan, config: dict[str, Any]):
        require_wandb()
        import wandb

        self._wandb = wandb
        run_id = stored_run_id(out) or secrets.token_hex(4)  # W&B's own ids are 8 characters too
        write_text_atomic(
            out / RUN_FILE,
            json.dumps({"id": run_id, "project": plan.wandb_project, "entity": plan.wandb_entity}) + "\n",
        )
        try:
            self._run = wandb.init(
                project=plan.wandb_project,
                entity=plan.wandb_entity or None,
                name=plan.wandb_run_name,
                id=run_id,
                resume="allow",
                reinit="finish_previous",  # a run left open in this process (it raised) ends; never reused
                dir=str(out),
                config=config,
            )
        except Exception as exc:  # noqa: BLE001 - wandb raises many kinds (login, network, settings)
            raise WandbError(
                f"Weights & Biases could not start the run: {type(exc).__name__}: {exc} (log in with "
                "`wandb login` or WANDB_API_KEY, check the network, or set WANDB_MODE=offline and "
                "`wandb sync` later)"
            ) from exc

    @property
    def run_id(self) -> str:
        return self._run.id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._run.log(values, step=step)

    def image(self, step: int, name: str, path: Path) -> None:
        self._run.log({name: self._wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self._run.finish()
