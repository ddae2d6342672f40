"""kohya's checkpoint retention (save_last_n_epochs/steps and their _state variants) -> checkpoints.keep.

kohya's removal rules are restated here from sd-scripts' library/train_util.py (get_remove_epoch_no,
get_remove_step_no, save_and_remove_state_on_epoch_end/stepwise) and train_network.py's saving loop, and
simulated over the whole run; dbspec's retention is its own pruning (runtime/checkpoints.save_checkpoint) on
the plan's checkpoint steps, and once a real tiny run. The surviving sets are compared as training steps:
a kohya epoch file at epoch e is step e x steps per epoch, and its `last` file / `last-state` folder is the
last step, where dbspec always saves a checkpoint (its weights are `final`'s)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from convert_kit import SD15, codes, fate, images, kohya, plan_of
from dbspec.runtime.checkpoints import save_checkpoint
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec

LORA = f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora"
IMAGES = 4  # one folder of 4 images, 1 repeat, batch 1: kohya's 4 steps per epoch
PER_EPOCH = 4


def kohya_survivors(
    total: int,
    *,
    every_steps: int | None = None,
    every_epochs: int | None = None,
    last_n: int | None = None,
    last_n_state: int | None = None,
    save_state: bool = False,
) -> tuple[set[int], set[int]]:
    """The steps whose model file and whose state folder kohya still holds after the run."""
    models: set[int] = set()
    states: set[int] = set()
    state_n = last_n_state if last_n_state else last_n  # kohya: `_state` if truthy, else the model's
    epochs = -(-total // PER_EPOCH)
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(PER_EPOCH):
            step += 1
            if every_steps and step % every_steps == 0:  # saved before the max_train_steps break
                models.add(step)
                if last_n is not None:
                    gone = step - last_n - 1
                    models.discard(gone - gone % every_steps)
                if save_state:
                    states.add(step)
                    if state_n is not None:
                        gone = step - state_n - 1
                        states.discard(gone - gone % every_steps)
            if step >= total:
                break
        if every_epochs and epoch % every_epochs == 0 and epoch < epochs:  # never at the last epoch
            models.add(epoch * PER_EPOCH)
            if last_n is not None:
                models.discard((epoch - every_epochs * last_n) * PER_EPOCH)
            if save_state:
                states.add(epoch * PER_EPOCH)
                if state_n is not None:
                    states.discard((epoch - every_epochs * state_n) * PER_EPOCH)
    models.add(total)  # `last`
    if save_state:
        states.add(total)  # `last-state`
    return models, states


def dbspec_survivors(tmp: Path, steps, keep: int) -> set[int]:
    """dbspec's own pruning over the plan's checkpoint steps: the steps whose weights it keeps."""
    return dbspec_kept(tmp, steps, keep)[0]


def dbspec_kept(tmp: Path, steps, keep: int, keep_state: int = 0) -> tuple[set[int], set[int]]:
    """dbspec's own pruning (runtime/checkpoints.save_checkpoint) over the plan's checkpoint steps: the steps
    whose checkpoint folder (weights) survives, and those that still hold their training state."""
    for step in steps:
        save_checkpoint(
            tmp,
            step,
            weights=lambda f: (f / "w.bin").write_bytes(b"w"),
            state={"step": step},
            keep=keep,
            keep_state=keep_state,
        )
    folders = list((tmp / "checkpoints").glob("step-*"))
    weights = {int(p.name.split("-")[1]) for p in folders if (p / "w.bin").is_file()}
    states = {int(p.name.split("-")[1]) for p in folders if (p / "training_state.pt").is_file()}
    assert weights == {int(p.name.split("-")[1]) for p in folders}  # state pruning never takes weights
    return weights, states


CASES = {
    # name: (kohya flags, total steps, simulation kwargs, exact)
    "epochs_every_1": ("--max_train_epochs 6 --save_every_n_epochs 1 --save_last_n_epochs 2", 24,
                       dict(every_epochs=1, last_n=2), True),
    "epochs_every_2": ("--max_train_epochs 9 --save_every_n_epochs 2 --save_last_n_epochs 2", 36,
                       dict(every_epochs=2, last_n=2), True),
    "steps_dividing": ("--max_train_steps 20 --save_every_n_steps 5 --save_last_n_steps 10", 20,
                       dict(every_steps=5, last_n=10), True),
    "steps_not_dividing": ("--max_train_steps 20 --save_every_n_steps 3 --save_last_n_steps 7", 20,
                           dict(every_steps=3, last_n=7), True),
    "steps_state_follows": ("--max_train_steps 22 --save_every_n_steps 4 --save_last_n_steps 4 "
                            "--save_state", 22,
                            dict(every_steps=4, last_n=4, save_state=True), True),
    "steps_state_fewer": ("--max_train_steps 20 --save_every_n_steps 3 --save_last_n_steps 7 --save_state "
                          "--save_last_n_steps_state 3", 20,
                          dict(every_steps=3, last_n=7, last_n_state=3, save_state=True), True),
    "steps_state_fewer_dividing": ("--max_train_steps 24 --save_every_n_steps 4 --save_last_n_steps 12 "
                                   "--save_state --save_last_n_steps_state 4", 24,
                                   dict(every_steps=4, last_n=12, last_n_state=4, save_state=True), True),
    "epochs_state_fewer": ("--max_train_epochs 8 --save_every_n_epochs 1 --save_last_n_epochs 4 --save_state "
                           "--save_last_n_epochs_state 2", 32,
                           dict(every_epochs=1, last_n=4, last_n_state=2, save_state=True), True),
    "epochs_state_more": ("--max_train_epochs 8 --save_every_n_epochs 1 --save_last_n_epochs 1 --save_state "
                          "--save_last_n_epochs_state 3", 32,
                          dict(every_epochs=1, last_n=1, last_n_state=3, save_state=True), False),
    "state_only": ("--max_train_steps 12 --save_every_n_steps 2 --save_state --save_last_n_steps_state 2", 12,
                   dict(every_steps=2, last_n_state=2, save_state=True), True),
}  # fmt: skip


def _convert(tmp_path: Path, flags: str):
    images(tmp_path / "x" / "1_ohwx dog", IMAGES, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --train_data_dir x --resolution 512 {flags}")
    return outcome, plan_of(outcome, tmp_path)


@pytest.mark.parametrize("name", list(CASES))
def test_dbspec_keeps_the_checkpoints_kohya_keeps(tmp_path, name):
    flags, total, sim, same_sets = CASES[name]
    outcome, plan = _convert(tmp_path, flags)
    assert plan.schedule.total_steps == total
    models, states = kohya_survivors(total, **sim)
    c = plan.checkpoints
    weights, resumable = dbspec_kept(tmp_path / "run", c.steps, c.keep, c.keep_state)
    if sim.get("save_state"):
        # the newest keep_state checkpoints keep their training state: kohya's state folders
        assert resumable == states
        # kohya's state folders hold the weights too, so dbspec keeps weights wherever kohya has either
        assert weights == models | states and (models == models | states) is same_sets
    else:
        assert weights == models and resumable == models
    key = re.findall(r"--(save_last_n_\w+)", flags)[0]  # the model count, else the state count
    assert fate(outcome, key) == "mapped" and "DBS404" not in codes(outcome)
    if "_state" in flags.split("save_state", 1)[-1]:  # a save_last_n_*_state count converts too
        state_key = re.findall(r"--(save_last_n_\w+_state)", flags)[0]
        assert fate(outcome, state_key) == "mapped"


def test_fewer_states_than_models_prune_the_older_checkpoints_to_weights(tmp_path):
    _, plan = _convert(tmp_path, CASES["steps_state_fewer"][0])
    # kohya: 7 steps of model files at every 3 -> 3 files (+ last); 3 steps of states -> 2 folders (+ last)
    assert (plan.checkpoints.keep, plan.checkpoints.keep_state) == (4, 3)
    _, plan = _convert(tmp_path / "b", CASES["state_only"][0])
    # every model file; 2 steps of states at every 2 -> 2 folders, the last step's among them (12 = 6 x 2)
    assert (plan.checkpoints.keep, plan.checkpoints.keep_state) == (0, 2)
    _, plan = _convert(tmp_path / "c", CASES["epochs_state_more"][0])
    assert (plan.checkpoints.keep, plan.checkpoints.keep_state) == (4, 0)  # every kept one resumable


def test_the_old_epoch_count_was_wrong_with_a_longer_epoch_interval(tmp_path):
    # with save_every_n_epochs 2, last_n 2 x 4 steps per epoch // 8 steps kept one checkpoint; kohya keeps two
    _, plan = _convert(tmp_path, CASES["epochs_every_2"][0])
    assert plan.checkpoints.keep == 3 and plan.checkpoints.steps.every == 8


def test_a_real_run_keeps_kohyas_set(tmp_path):
    flags, total, sim, _ = CASES["steps_not_dividing"]
    _, converted = _convert(tmp_path / "convert", flags)
    every, keep = converted.checkpoints.steps.every, converted.checkpoints.keep
    spec = write_spec(
        tmp_path,
        steps=total,
        extra=f'[adapter]\nkind = "lora"\nrank = 2\n[checkpoints]\nevery = {every}\nkeep = {keep}\n',
    )
    result = execute(compile_spec(spec, ["schedule.batch_size=1"]))
    assert result.status == "finished"
    kept = {int(p.name.split("-")[1]) for p in (Path(result.final).parent / "checkpoints").glob("step-*")}
    assert kept == kohya_survivors(total, **sim)[0]


def test_with_both_intervals_the_step_retention_converts_and_the_epoch_one_is_inert(tmp_path):
    flags = (
        "--max_train_steps 20 --save_every_n_steps 5 --save_last_n_steps 10 --save_every_n_epochs 2 "
        "--save_last_n_epochs 1"
    )
    outcome, plan = _convert(tmp_path, flags)
    models, _ = kohya_survivors(20, every_steps=5, last_n=10)  # kohya's step files (its epoch files aside)
    assert dbspec_survivors(tmp_path / "run", plan.checkpoints.steps, plan.checkpoints.keep) == models
    assert fate(outcome, "save_last_n_steps") == "mapped" and fate(outcome, "save_last_n_epochs") == "inert"
    assert fate(outcome, "save_every_n_epochs") == "differs"  # dbspec keeps the step interval only
