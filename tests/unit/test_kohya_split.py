"""kohya's validation split as evaluation.split (dbspec/compiler/evaluation.py kohya_split) against
kohya's own split_train_val run on the same file lists (how: tests/unit/kohya_validation_split.json), and
kohya's validation timesteps (timestep_spacing = "linspace") against numpy's linspace as kohya calls it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dbspec.compiler.evaluation import linspace_timesteps
from dbspec.frontend import plan_spec
from tests.runtime.runspec import CPU, ROOT, compile_spec, summary_text

CASES = json.loads((Path(__file__).parent / "kohya_validation_split.json").read_text())["cases"]
TOY = ROOT / "specs" / "data" / "toy" / "toy-00.png"


def _spec(tmp: Path, case: dict, extra: str = "") -> Path:
    """One instance dataset per kohya subset, holding files with the subset's names (toy image copies)."""
    text = 'spec_version = 2\n[model]\nbase = "builtin:tiny-sd1"\n'
    for k, size in enumerate(case["sizes"]):
        folder = tmp / "data" / f"d{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(size):  # the fixture's file names
            shutil.copy(TOY, folder / f"d{k}-{i:02d}.png")
        text += f'[[datasets]]\nname = "d{k}"\npath = "data/d{k}"\n'
        text += 'prompt = "a photo of ohwx toy"\nresolution = 64\n'
    seeded = case["validation_seed"] is not None
    seed = case["validation_seed"] if seeded else case["seed"]
    draw = "reseed" if seeded else "stream"
    text += '[buckets]\nstep = 16\n[schedule]\nsteps = 4\n[cache]\ndir = "cache"\n[output]\ndir = "out"\n'
    text += f'[evaluation]\nsplit = {case["split"]!r}\nseed = {seed}\nsplit_draw = "{draw}"\n' + extra
    (tmp / "spec.toml").write_text(text)
    return tmp / "spec.toml"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['sizes']}-{c['split']}-{c['validation_seed']}")
def test_the_split_is_kohyas_own(tmp_path, case):
    plan = compile_spec(_spec(tmp_path, case))
    e = plan.evaluation
    assert e.selection == "kohya_split" and e.split == case["split"]
    for k, (trained, scored) in enumerate(zip(case["trained"], case["scored"])):
        assert sorted(img.rel for img in plan.datasets[k].images) == sorted(trained)
        mine = [
            (img.rel, also) for img, d, also in zip(e.holdout, e.holdout_datasets, e.also_trained) if d == k
        ]
        assert [rel for rel, _ in mine] == scored  # kohya's order too
        assert [also for _, also in mine] == [rel in trained for rel in scored]
        assert plan.datasets[k].samples_per_epoch == len(trained)
    assert all(
        not img.latent_keys and not img.text_key for img in e.holdout
    )  # scored images are never cached


def test_rounding_that_trains_a_scored_image_is_shown_in_the_plan(tmp_path):
    case = next(c for c in CASES if c["sizes"] == [7] and c["split"] == 0.5)  # ceil(3.5) + round(3.5) = 8
    plan = compile_spec(_spec(tmp_path, case))
    assert sum(plan.evaluation.also_trained) == 1
    text = summary_text(plan)
    assert "also trained, kohya's rounding" in text and "random.seed(seed) per dataset" in text


@pytest.mark.parametrize(
    ("count", "low", "high"),
    [(4, 0, 1000), (4, 100, 900), (3, 0, 1000), (7, 0, 1000), (4, 0, 3), (5, 17, 23)],
)
def test_linspace_timesteps_are_kohyas_formula(count, low, high):
    expected = np.linspace(low, high, count + 2, dtype=int)[1:-1]  # train_network.py's validation_timesteps
    assert linspace_timesteps(count, low, high) == tuple(int(t) for t in expected)


def test_the_plan_scores_kohyas_timesteps_over_the_noise_window(tmp_path):
    case = CASES[0]
    extra = 'timestep_spacing = "linspace"\ntimesteps = 4\n[validation]\nevery = 2\n'
    plan = compile_spec(_spec(tmp_path, case, extra), ["loss.min_timestep=100", "loss.max_timestep=900"])
    expected = tuple(int(t) for t in np.linspace(100, 900, 6, dtype=int)[1:-1])
    assert plan.evaluation.timesteps == expected and plan.evaluation.timestep_spacing == "linspace"


def test_max_images_caps_the_scored_images_and_the_plan_says_so(tmp_path):
    case = next(c for c in CASES if c["sizes"] == [9, 6])
    plan = compile_spec(_spec(tmp_path, case, "max_images = 2\n"))
    assert plan.evaluation.max_images == 2 and len(plan.evaluation.holdout) > 2
    assert "the first 2 of" in summary_text(plan)
    roomy = compile_spec(_spec(tmp_path, case, "max_images = 99\n"))
    assert roomy.evaluation.max_images == 0  # a cap above the count changes nothing: none in the plan


def _codes(path: Path) -> list[tuple[str, str, str]]:
    planned = plan_spec(path, CPU, str(path), [])
    return [(d.code, d.severity, d.path) for d in planned.diagnostics if d.severity == "error"]


def test_a_split_that_leaves_a_dataset_nothing_to_train_is_an_error(tmp_path):
    case = dict(CASES[0], split=1.0)
    assert ("DBS364", "error", "evaluation.split") in _codes(_spec(tmp_path, case))


def test_split_datasets_must_name_instance_datasets(tmp_path):
    path = _spec(tmp_path, CASES[0], 'split_datasets = ["nope"]\n')
    assert ("DBS365", "error", "evaluation.split_datasets") in _codes(path)


def test_split_datasets_splits_only_the_named_ones(tmp_path):
    case = next(c for c in CASES if c["sizes"] == [11, 4, 6])
    plan = compile_spec(_spec(tmp_path, case, 'split_datasets = ["d1"]\n'))
    e = plan.evaluation
    assert set(e.holdout_datasets) == {1}
    assert len(plan.datasets[0].images) == 11 and len(plan.datasets[2].images) == 6
    assert [img.rel for img in e.holdout] == case["scored"][1]  # reseeded: each subset's draw is its own


def test_each_kohya_folder_of_a_kohya_folders_dataset_is_split_on_its_own(tmp_path):
    """layout = "kohya_folders": kohya makes one subset per `N_class tokens` sub-folder and splits each."""
    case = next(c for c in CASES if c["sizes"] == [9, 6])
    for k, (folder, size) in enumerate(zip(("1_ohwx dog", "2_ohwx cat"), case["sizes"])):
        (tmp_path / "train" / folder).mkdir(parents=True)
        for i in range(size):
            shutil.copy(TOY, tmp_path / "train" / folder / f"d{k}-{i:02d}.png")
    (tmp_path / "spec.toml").write_text(
        'spec_version = 2\n[model]\nbase = "builtin:tiny-sd1"\n'
        '[[datasets]]\nname = "subject"\npath = "train"\n'
        'layout = "kohya_folders"\nresolution = 64\n[buckets]\nstep = 16\n[schedule]\nsteps = 4\n'
        '[cache]\ndir = "cache"\n[output]\ndir = "out"\n'
        f"[evaluation]\nsplit = 0.2\nseed = {case['validation_seed']}\n"
    )
    plan = compile_spec(tmp_path / "spec.toml")
    names = [img.rel.split("/")[1] for img in plan.evaluation.holdout]
    assert names == case["scored"][0] + case["scored"][1]
    assert sorted(img.rel.split("/")[1] for img in plan.datasets[0].images) == sorted(
        sum(case["trained"], [])
    )


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('split_draw = "stream"\n', "evaluation.split_draw"),
        ('split_datasets = ["d0"]\n', "evaluation.split_datasets"),
    ],
)
def test_split_options_without_a_split_are_errors(tmp_path, extra, key):
    path = _spec(tmp_path, CASES[0])
    text = path.read_text().replace("split = 0.25\n", "").replace('split_draw = "reseed"\n', "")
    path.write_text(text + extra)
    assert ("DBS244", "error", key) in _codes(path)


def test_holdout_dataset_with_a_split_is_an_error(tmp_path):
    path = _spec(tmp_path, CASES[0], 'holdout_dataset = "d0"\n')
    assert ("DBS244", "error", "evaluation.holdout_dataset") in _codes(path)


# --- kohya's per-dataset validation_split (datasets.eval_split) and a split that is never scored ---------
MIXED = json.loads((Path(__file__).parent / "kohya_validation_split.json").read_text())["mixed_cases"]


def _mixed_spec(tmp: Path, case: dict, extra: str = "") -> Path:
    """One dataset per kohya dataset: evaluation.split is the first fraction, the others each dataset's own
    eval_split; split_datasets names the datasets kohya splits (its fraction above 0)."""
    path = _spec(tmp, dict(case, split=next(f for f in case["splits"] if f)), extra)
    text = path.read_text()
    first = next(f for f in case["splits"] if f)
    for k, f in enumerate(case["splits"]):
        if f and f != first:
            text = text.replace(f'path = "data/d{k}"\n', f'path = "data/d{k}"\neval_split = {f!r}\n')
    if not all(case["splits"]):
        names = ", ".join(f'"d{k}"' for k, f in enumerate(case["splits"]) if f)
        text += f"split_datasets = [{names}]\n"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", MIXED, ids=lambda c: f"{c['sizes']}-{c['splits']}-{c['validation_seed']}")
def test_each_dataset_splits_with_its_own_fraction_as_kohya(tmp_path, case):
    plan = compile_spec(_mixed_spec(tmp_path, case))
    e = plan.evaluation
    assert e.dataset_splits == tuple(case["splits"])
    for k, (trained, scored) in enumerate(zip(case["trained"], case["scored"])):
        assert sorted(img.rel for img in plan.datasets[k].images) == sorted(trained)
        mine = [
            (img.rel, also) for img, d, also in zip(e.holdout, e.holdout_datasets, e.also_trained) if d == k
        ]
        assert mine == [(rel, rel in trained) for rel in scored]  # kohya's order, and its rounding
        assert plan.datasets[k].samples_per_epoch == len(trained)
    assert "split per dataset" in summary_text(plan)


def test_a_dataset_eval_split_needs_a_split_that_splits_it(tmp_path):
    case = MIXED[2]  # d1 is not split (split_datasets leaves it out)
    path = _mixed_spec(tmp_path, case)
    path.write_text(path.read_text().replace('path = "data/d1"\n', 'path = "data/d1"\neval_split = 0.5\n'))
    assert ("DBS570", "error", "datasets[1].eval_split") in _codes(path)
    alone = _spec(tmp_path / "alone", CASES[0])
    text = alone.read_text().replace("split = 0.25\n", "").replace('split_draw = "reseed"\n', "")
    alone.write_text(text.replace('path = "data/d0"\n', 'path = "data/d0"\neval_split = 0.5\n'))
    assert ("DBS570", "error", "datasets[0].eval_split") in _codes(alone)


def test_score_false_holds_kohyas_images_out_and_scores_nothing(tmp_path):
    case = next(c for c in CASES if c["sizes"] == [9, 6])
    plan = compile_spec(_spec(tmp_path, case, "score = false\n"))
    e = plan.evaluation
    assert "eval_loss" not in e.metrics and not e.scored and e.timesteps == () and e.cost == ()
    assert len(e.steps) == 0  # no evaluation step: the runtime builds no evaluator
    for k, (trained, scored) in enumerate(zip(case["trained"], case["scored"])):
        assert sorted(img.rel for img in plan.datasets[k].images) == sorted(trained)
        assert [img.rel for img, d in zip(e.holdout, e.holdout_datasets) if d == k] == scored
    text = summary_text(plan)
    assert "evaluation.score = false" in text and "held out of `d0`" in text


def _warnings(path: Path) -> list[tuple[str, str]]:
    planned = plan_spec(path, CPU, str(path), [])
    return [(d.code, d.path) for d in planned.diagnostics if d.severity == "warning"]


def test_score_false_without_a_holdout_or_with_loss_settings_warns(tmp_path):
    path = _spec(tmp_path, CASES[0], "score = false\ntimesteps = 4\n")
    assert ("DBS571", "evaluation.timesteps") in _warnings(path)
    bare = _spec(tmp_path / "bare", CASES[0])
    text = bare.read_text().replace("split = 0.25\n", "").replace('split_draw = "reseed"\n', "")
    bare.write_text(text + "score = false\n")
    assert ("DBS571", "evaluation.score") in _warnings(bare)


def test_the_best_checkpoint_by_eval_loss_needs_scoring(tmp_path):
    path = _spec(tmp_path, CASES[0], 'score = false\n[checkpoints]\nselect = "eval_loss"\n')
    assert ("DBS275", "error", "checkpoints.select") in _codes(path)


def test_an_eval_split_that_leaves_nothing_to_train_names_the_dataset_key(tmp_path):
    path = _mixed_spec(tmp_path, MIXED[0])  # d1 has its own eval_split
    path.write_text(path.read_text().replace("eval_split = 0.5\n", "eval_split = 1.0\n"))
    assert ("DBS364", "error", "datasets[1].eval_split") in _codes(path)
