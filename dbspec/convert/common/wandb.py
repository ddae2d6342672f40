"""Weights & Biases settings of legacy configs -> `[logging] wandb*` (kohya `--log_with wandb`, diffusers and
SimpleTuner `--report_to wandb`). An API key is never written to a spec."""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy

WANDB = ("logging", "wandb")
PROJECT = ("logging", "wandb_project")
RUN_NAME = ("logging", "wandb_run_name")
ENTITY = ("logging", "wandb_entity")


def api_key_not_written(legacy: Legacy, conv: Conversion) -> None:
    """A W&B API key in a legacy config: a secret, so not written; the spec's header says how to log in."""
    if not legacy.given or not legacy.value:
        return
    conv.inert(legacy, "a secret: not written to the spec (log in with `wandb login` or WANDB_API_KEY)")
    conv.notes.append(
        f"{conv.tool} `{legacy.key}` is not written (a spec holds no secrets): log in to Weights & Biases "
        "with `wandb login`, or set WANDB_API_KEY where the run starts"
    )
