"""A tiny run with kohya's validation split (evaluation.split, split_draw = "stream", timestep_spacing =
"linspace", max_images): it trains the training part, scores the capped held-out images at kohya's
timesteps, and a stopped-and-resumed run is bit-exact with an uninterrupted one."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from safetensors.torch import load_file

from dbspec.runtime.execute import execute
from dbspec.plan.kohya_loader import loader_batches
from tests.runtime.runspec import compile_spec, summary_text, write_spec

SPLIT = (
    '[adapter]\nkind = "lora"\nrank = 2\n[validation]\nevery = 1\n'
    '[evaluation]\nsplit = 0.5\nseed = 11\nsplit_draw = "stream"\ntimestep_spacing = "linspace"\n'
    "timesteps = 4\nbands = 2\nmax_images = 2\n"
)


def _rows(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "eval_loss" in row]


def test_a_kohya_split_run_trains_evaluates_and_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=SPLIT)
    plan = compile_spec(spec, ["output.dir=whole"])
    e, files = plan.evaluation, sorted(p.name for p in (tmp_path / "data" / "toy").glob("*.png"))
    # kohya: one random.seed(11) stream, the training part's shuffle, then the validation part's
    rng, n = random.Random(11), len(files)
    first, second = list(range(n)), list(range(n))
    rng.shuffle(first)
    rng.shuffle(second)
    trained = sorted(files[i] for i in first[: math.ceil(n * 0.5)])
    scored = [files[i] for i in second[n - round(n * 0.5) :]]
    assert [img.rel for img in plan.datasets[0].images] == trained
    assert [img.rel for img in e.holdout] == scored and e.max_images == 2
    assert e.also_trained == tuple(rel in trained for rel in scored)
    assert e.timesteps == (200, 400, 600, 800)

    whole = execute(plan)
    parts = compile_spec(spec, ["output.dir=parts"])
    stopped = execute(parts, stop_after=2)
    resumed = execute(parts, resume=True)
    assert stopped.losses + resumed.losses == whole.losses
    rows = _rows(Path(whole.output))
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(len(r["eval_loss_bands"]) == 2 for r in rows)
    assert rows == _rows(Path(resumed.output))
    a = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    b = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the cap: scoring every held-out image gives another number at the same step
    every = compile_spec(spec, ["output.dir=every", "evaluation.max_images=0"])
    assert _rows(Path(execute(every, stop_after=1).output))[0]["eval_loss"] != rows[0]["eval_loss"]


def test_a_split_without_scoring_trains_the_same_images_and_evaluates_nothing(tmp_path):
    """evaluation.score = false (kohya train_db.py / sdxl_train.py): the split's training part trains as
    with scoring, and no evaluation runs (no eval_loss row, no evaluator)."""
    unscored = '[adapter]\nkind = "lora"\nrank = 2\n[evaluation]\nsplit = 0.5\nseed = 11\nscore = false\n'
    spec = write_spec(tmp_path, steps=2, extra=unscored)
    plan = compile_spec(spec, ["output.dir=unscored"])
    scored = compile_spec(spec, ["output.dir=scored", "evaluation.score=true", "validation.every=1"])
    assert plan.datasets == scored.datasets and plan.evaluation.holdout == scored.evaluation.holdout
    assert not plan.evaluation.metrics and "eval_loss" in scored.evaluation.metrics
    quiet, loud = execute(plan), execute(scored)
    assert quiet.losses == loud.losses  # scoring never touches training
    assert _rows(Path(quiet.output)) == [] and len(_rows(Path(loud.output))) == 2


LOADER = (
    '[adapter]\nkind = "lora"\nrank = 2\n[validation]\nevery = 1\n'
    '[evaluation]\nsplit = 0.5\nseed = 11\ntimestep_spacing = "linspace"\ntimesteps = 4\nbands = 2\n'
    'order = "kohya_loader"\nmax_batches = 2\n'
)


def test_kohyas_validation_loader_order_scores_its_first_batches(tmp_path):
    """evaluation.order = "kohya_loader" (kohya's max_validation_steps with max_data_loader_n_workers = 0):
    each evaluation scores the images of kohya's first validation batches, an image once per repeat. The
    order adds nothing to a checkpoint (the scored images are the plan's, the noise reseeded at every
    evaluation): the split run's resume is test_a_kohya_split_run_trains_evaluates_and_resumes_bit_exact's."""
    spec = write_spec(tmp_path, steps=3, extra=LOADER)
    plan = compile_spec(spec, ["output.dir=whole"])
    e = plan.evaluation
    held = len(e.holdout)
    repeats = [img.repeats for img in e.holdout]  # 2: kohya's validation dataset keeps num_repeats
    batches = loader_batches([""] * held, [img.bucket for img in e.holdout], repeats, {"": 2})
    assert e.order == "kohya_loader" and e.scored_order == tuple(batches[0]) + tuple(batches[1])
    assert len(batches) == sum(repeats) // 2 and len(e.scored_order) == 4
    assert "kohya's validation loader" in summary_text(plan)

    whole = execute(plan)
    rows = _rows(Path(whole.output))
    assert [r["step"] for r in rows] == [1, 2, 3] and len(whole.losses) == 3

    # every batch: every held-out image, twice, another number at the same step
    every = compile_spec(spec, ["output.dir=every", "evaluation.max_batches=0"])
    assert sorted(every.evaluation.scored_order) == sorted(i for i in range(held) for _ in range(2))
    assert _rows(Path(execute(every, stop_after=1).output))[0]["eval_loss"] != rows[0]["eval_loss"]


def _kohya_recorder(rows: list[dict], epochs: dict[int, int]) -> list[float]:
    """The number kohya logs after each validation, computed here from each row's per-timestep losses (one
    scored image, a band per timestep) as library/train_util.py's LossRecorder computes it."""
    losses, total, logged = [], 0.0, []
    for row in rows:
        for position, loss in enumerate(row["eval_loss_bands"]):
            if epochs[row["step"]] == 0:
                losses.append(loss)
            else:
                while len(losses) <= position:
                    losses.append(0.0)
                total -= losses[position]
                losses[position] = loss
            total += loss
        logged.append(total / len(losses))
    return logged


def test_kohyas_running_mean_is_logged_and_resumes_bit_exact(tmp_path):
    """evaluation.log = "kohya_running_mean": each evaluation logs kohya's validation loss recorder over
    every (image, timestep) loss so far, appended in the first epoch and written over after; training is
    the same as with the plain mean, and a run stopped in its second epoch resumes bit-exact (the recorder
    is in the checkpoint)."""
    extra = SPLIT.replace("bands = 2\nmax_images = 2", "bands = 4\nmax_images = 1")
    spec = write_spec(tmp_path, steps=1, extra=extra)
    per_epoch = compile_spec(spec, ["output.dir=probe"]).schedule.steps_per_epoch
    steps = 2 * per_epoch + 1  # into the third epoch
    spec = write_spec(tmp_path, steps=steps, extra=extra + 'log = "kohya_running_mean"\n')
    plan = compile_spec(spec, ["output.dir=whole", "logging.every=1"])  # every step's epoch
    assert plan.evaluation.log == "kohya_running_mean" and plan.evaluation.max_images == 1
    assert "kohya's running mean" in summary_text(plan)
    whole = execute(plan)
    lines = [json.loads(line) for line in (Path(whole.output) / "metrics.jsonl").read_text().splitlines()]
    epochs = {row["step"]: row["epoch"] for row in lines if "loss" in row}
    rows = _rows(Path(whole.output))
    assert len(rows) == steps and max(epochs.values()) == 2
    assert [r["eval_loss"] for r in rows] == _kohya_recorder(rows, epochs)
    assert rows[1]["eval_loss"] == sum(rows[0]["eval_loss_bands"] + rows[1]["eval_loss_bands"]) / 8

    # the plain mean's run into the second epoch (where the recorder starts writing over): the logged number
    # never touches training, and the bands are the same
    plain = compile_spec(spec, ["output.dir=plain", "evaluation.log=mean"])
    mean = execute(plain, stop_after=per_epoch + 1)
    assert mean.losses == whole.losses[: per_epoch + 1]
    bands = [r["eval_loss_bands"] for r in _rows(Path(mean.output))]
    assert len(bands) == per_epoch + 1 and bands == [r["eval_loss_bands"] for r in rows[: per_epoch + 1]]
    assert [r["eval_loss"] for r in _rows(Path(mean.output))][1:] != [r["eval_loss"] for r in rows][
        1 : per_epoch + 1
    ]

    parts = compile_spec(spec, ["output.dir=parts"])
    stopped = execute(parts, stop_after=per_epoch + 1)
    resumed = execute(parts, resume=True)
    assert stopped.losses + resumed.losses == whole.losses
    assert _rows(Path(resumed.output)) == rows
