"""kohya's validation settings (validation_split, validation_seed, validate_every_n_steps/_epochs,
max_validation_steps) -> the evaluation holdout (dbspec/convert/kohya/evaluation.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from convert_kit import (
    SD15,
    SDXL,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    fate,
    images,
    kohya,
    plan_of,
    write,
)

LORA = (
    f"train_network.py --pretrained_model_name_or_path={SD15} --train_data_dir=x --resolution=512 "
    "--network_module=networks.lora --learning_rate=1e-4 --max_train_steps=200"
)


CASES = json.loads((Path(__file__).parent / "kohya_validation_split.json").read_text())["cases"]
KOHYA_TIMESTEPS = tuple(int(t) for t in np.linspace(0, 1000, 6, dtype=int)[1:-1])  # train_network.py


def _case(sizes: list[int], split: float) -> dict:
    return next(c for c in CASES if c["sizes"] == sizes and c["split"] == split)


def _names(files: list[str]) -> list[str]:
    """The fixture's `d<k>-<i>.png` as convert_kit.images names the i-th image (the split depends on the
    count and the draw only)."""
    return [f"img{int(name.split('-')[1][:2]):03d}.png" for name in files]


def _assert_kohyas_split(plan, case: dict, datasets: list[int]) -> None:
    """Each split dataset trains kohya's training part and the evaluation scores its validation part, in
    kohya's order, an image in both where kohya's rounding puts it in both."""
    e = plan.evaluation
    for k, index in enumerate(datasets):
        trained, scored = _names(case["trained"][k]), _names(case["scored"][k])
        assert sorted(Path(img.rel).name for img in plan.datasets[index].images) == sorted(trained)
        mine = [
            (Path(img.rel).name, also)
            for img, d, also in zip(e.holdout, e.holdout_datasets, e.also_trained)
            if d == index
        ]
        assert mine == [(name, name in trained) for name in scored]


@pytest.mark.parametrize(("sizes", "split"), [([8], 0.25), ([10], 0.3), ([5], 0.3), ([7], 0.5)])
def test_validation_split_with_a_seed_is_kohyas_split(tmp_path, sizes, split):
    case = _case(sizes, split)
    images(tmp_path / "x" / "1_ohwx dog", sizes[0], (512, 512))
    command = f"{LORA} --validation_split {split} --validation_seed {case['validation_seed']}"
    outcome = kohya(tmp_path, command=command)
    plan = plan_of(outcome, tmp_path)
    e = plan.evaluation
    assert e.selection == "kohya_split" and e.split_draw == "reseed" and e.seed == case["validation_seed"]
    assert e.timesteps == KOHYA_TIMESTEPS and e.timestep_spacing == "linspace"
    assert e.log == "kohya_running_mean"  # the number kohya logs: its validation loss recorder
    _assert_kohyas_split(plan, case, [0])
    assert fate(outcome, "validation_split") == "mapped" and fate(outcome, "validation_seed") == "mapped"


def test_the_running_mean_notes_kohyas_batch_means_above_batch_size_one(tmp_path):
    """kohya's recorder entries are batch means; dbspec's are each image's: a note above batch size 1."""
    images(tmp_path / "x" / "1_ohwx dog", 8, (512, 512))
    command = f"{LORA} --validation_split 0.25 --validation_seed 3"
    one = kohya(tmp_path, command=command)
    two = kohya(tmp_path, command=f"{command} --train_batch_size 2")
    assert 'log = "kohya_running_mean"' in one.text and 'log = "kohya_running_mean"' in two.text
    assert not any("a batch's mean" in n for n in one.conversion.notes)
    assert any("a batch's mean" in n for n in two.conversion.notes)


def test_a_split_that_rounds_to_one_scored_image_scores_an_image_kohya_also_trains(tmp_path):
    images(tmp_path / "x" / "1_ohwx dog", 3, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --validation_split 0.2 --validation_seed 5")
    plan = plan_of(outcome, tmp_path)  # kohya trains ceil(3 x 0.8) = 3 images and scores round(0.6) = 1
    assert len(plan.datasets[0].images) == 3 and plan.evaluation.also_trained == (True,)


def test_a_split_that_rounds_to_no_scored_image_differs(tmp_path):
    images(tmp_path / "x" / "1_ohwx dog", 2, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --validation_split 0.2")
    plan = plan_of(outcome, tmp_path)  # round(2 x 0.2) = 0
    assert plan.evaluation.metrics == () and fate(outcome, "validation_split") == "differs"


def test_a_dataset_config_with_a_reg_subset_splits_the_instance_subsets_only(tmp_path):
    """Two instance subsets and a reg subset, validation_seed in the dataset config (sdxl_train_network)."""
    case = _case([9, 6], 0.2)
    images(tmp_path / "a", 9, (512, 512))
    images(tmp_path / "b", 6, (512, 512))
    images(tmp_path / "reg", 5, (512, 512))
    write(
        tmp_path / "d.toml",
        "[general]\nresolution = 512\n[[datasets]]\nvalidation_split = 0.2\nvalidation_seed = 1234\n"
        '[[datasets.subsets]]\nimage_dir = "a"\nclass_tokens = "ohwx dog"\nnum_repeats = 2\n'
        '[[datasets.subsets]]\nimage_dir = "b"\nclass_tokens = "ohwx dog"\n'
        '[[datasets.subsets]]\nimage_dir = "reg"\nclass_tokens = "dog"\nis_reg = true\n',
    )
    command = (
        f"sdxl_train_network.py --pretrained_model_name_or_path={SDXL} --dataset_config d.toml "
        "--network_module=networks.lora --max_train_steps=40 --validate_every_n_steps 20"
    )
    outcome = kohya(tmp_path, command=command)
    plan = plan_of(outcome, tmp_path)
    _assert_kohyas_split(plan, case, [0, 1])
    assert len(plan.datasets[2].images) == 5 and 2 not in plan.evaluation.holdout_datasets  # reg: never split
    assert plan.evaluation.seed == 1234 and tuple(plan.evaluation.steps) == (20, 40)
    assert "split_datasets" not in outcome.text  # every instance dataset: the default


def test_without_validation_seed_the_split_follows_the_training_seed_stream(tmp_path):
    """Three subsets, no validation_seed: kohya's training datasets shuffle each subset from the stream
    random.seed(seed) started, then its validation datasets do again; max_validation_steps at batch 1."""
    case = _case([12, 3, 9], 0.3)
    for name, count in zip("abc", case["sizes"]):
        images(tmp_path / name, count, (512, 512))
    subsets = "".join(f'[[datasets.subsets]]\nimage_dir = "{n}"\nclass_tokens = "ohwx dog"\n' for n in "abc")
    write(tmp_path / "d.toml", f"[[datasets]]\nresolution = 512\nvalidation_split = 0.3\n{subsets}")
    command = (
        f"train_network.py --pretrained_model_name_or_path={SD15} --dataset_config d.toml --seed 2024 "
        "--network_module=networks.lora --max_train_steps=60 --max_validation_steps 2"
    )
    outcome = kohya(tmp_path, command=command)
    plan = plan_of(outcome, tmp_path)
    e = plan.evaluation
    assert e.split_draw == "stream" and e.seed == 2024
    _assert_kohyas_split(plan, case, [0, 1, 2])
    assert e.max_images == 2 and fate(outcome, "max_validation_steps") == "differs"
    assert fate(outcome, "datasets[0].validation_split") == "mapped"


def test_only_the_datasets_kohya_splits_are_split(tmp_path):
    """A split dataset of three subsets next to an unsplit one: split_datasets names the split ones."""
    case = _case([11, 4, 6], 0.35)
    for name, count in zip("abc", case["sizes"]):
        images(tmp_path / name, count, (512, 512))
    images(tmp_path / "other", 5, (512, 512))
    subsets = "".join(f'[[datasets.subsets]]\nimage_dir = "{n}"\nclass_tokens = "ohwx dog"\n' for n in "abc")
    write(
        tmp_path / "d.toml",
        f"[[datasets]]\nresolution = 512\nvalidation_split = 0.35\nvalidation_seed = 0\n{subsets}"
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "other"\n'
        'class_tokens = "ohwx cat"\n',
    )
    command = (
        f"train_network.py --pretrained_model_name_or_path={SD15} --dataset_config d.toml "
        "--network_module=networks.lora --max_train_steps=60 --max_validation_steps 50"
    )
    outcome = kohya(tmp_path, command=command)
    plan = plan_of(outcome, tmp_path)
    _assert_kohyas_split(plan, case, [0, 1, 2])
    assert len(plan.datasets[3].images) == 5 and set(plan.evaluation.holdout_datasets) == {0, 1, 2}
    assert plan.evaluation.max_images == 0 and fate(outcome, "max_validation_steps") == "inert"


def test_without_any_seed_the_split_differs(tmp_path):
    images(tmp_path / "x" / "1_ohwx dog", 8, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --validation_split 0.25")
    plan = plan_of(outcome, tmp_path)
    assert plan.evaluation.split_draw == "stream" and len(plan.evaluation.holdout) == 2
    assert fate(outcome, "validation_split") == "differs"


def test_validate_every_n_steps_becomes_the_validation_interval(tmp_path):
    images(tmp_path / "x" / "1_ohwx dog", 8, (512, 512))
    command = f"{LORA} --validation_split 0.25 --validate_every_n_steps 50 --max_validation_steps 2"
    outcome = kohya(tmp_path, command=command)
    plan = plan_of(outcome, tmp_path)
    assert tuple(plan.evaluation.steps) == (50, 100, 150, 200)
    assert fate(outcome, "validate_every_n_steps") == "mapped"
    assert fate(outcome, "max_validation_steps") == "inert"  # 2 batches: all of kohya's round(8 x 0.25)


def test_kohya_validates_every_epoch_by_default(tmp_path):
    images(tmp_path / "x" / "1_ohwx dog", 8, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --validation_split 0.25 --train_batch_size 2")
    plan = plan_of(outcome, tmp_path)
    assert plan.evaluation.steps.every == plan.schedule.steps_per_epoch == 3  # 6 trained images, batch 2


def test_validation_keys_without_a_split_are_inert(tmp_path):
    images(tmp_path / "x" / "1_ohwx dog", 4, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --validate_every_n_steps 50 --validation_seed 1")
    assert outcome.written, errors(outcome)
    assert fate(outcome, "validate_every_n_steps") == "inert" and fate(outcome, "validation_seed") == "inert"


MIXED = json.loads((Path(__file__).parent / "kohya_validation_split.json").read_text())["mixed_cases"]


def _mixed(tmp_path: Path, case: dict) -> str:
    """A dataset config with one kohya [[datasets]] per case dataset, each with its own validation_split
    (and the case's validation_seed on each split one); the images named as convert_kit.images names them."""
    text = "[general]\nresolution = 512\n"
    for k, (count, split) in enumerate(zip(case["sizes"], case["splits"])):
        images(tmp_path / f"s{k}", count, (512, 512))
        text += "[[datasets]]\n"
        if split:
            text += f"validation_split = {split!r}\n"
            if case["validation_seed"] is not None:
                text += f"validation_seed = {case['validation_seed']}\n"
        text += f'[[datasets.subsets]]\nimage_dir = "s{k}"\nclass_tokens = "ohwx dog"\n'
    write(tmp_path / "d.toml", text)
    seed = "" if case["seed"] is None else f" --seed {case['seed']}"
    return f"--dataset_config d.toml{seed}"


@pytest.mark.parametrize("case", MIXED, ids=lambda c: f"{c['sizes']}-{c['splits']}-{c['validation_seed']}")
def test_datasets_with_their_own_validation_split_split_as_kohya(tmp_path, case):
    """kohya's validation_split is a dataset parameter: each [[datasets]] splits with its own fraction
    (datasets.eval_split where it is not the first's), the others train whole."""
    command = (
        f"train_network.py --pretrained_model_name_or_path={SD15} {_mixed(tmp_path, case)} "
        "--network_module=networks.lora --max_train_steps=60"
    )
    outcome = kohya(tmp_path, command=command)
    plan = plan_of(outcome, tmp_path)
    assert plan.evaluation.dataset_splits == tuple(case["splits"])
    for k, split in enumerate(case["splits"]):
        one = dict(case, trained=[case["trained"][k]], scored=[case["scored"][k]])
        _assert_kohyas_split(plan, one, [k])
        if split:
            assert fate(outcome, f"datasets[{k}].validation_split") == "mapped"
            if case["validation_seed"] is not None:
                assert fate(outcome, f"datasets[{k}].validation_seed") == "mapped"
    assert not [r for r in outcome.conversion.reports.values() if r.fate == "differs" and "split" in r.key]


def test_a_dataset_with_another_validation_seed_gets_its_own_eval_seed(tmp_path):
    case = MIXED[0]
    command = (
        f"train_network.py --pretrained_model_name_or_path={SD15} {_mixed(tmp_path, case)} "
        "--network_module=networks.lora --max_train_steps=60"
    )
    first, second = (tmp_path / "d.toml").read_text().rsplit("validation_seed = 3", 1)
    write(tmp_path / "d.toml", first + "validation_seed = 5" + second)  # the second dataset's own seed
    outcome = kohya(tmp_path, command=command + " --seed 1")
    assert fate(outcome, "datasets[1].validation_seed") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.evaluation.dataset_seeds[1] == 5 and "eval_seed = 5" in outcome.text


@pytest.mark.parametrize("script", ["train_db", "sdxl_train"])
def test_train_db_and_sdxl_train_hold_kohyas_images_out_without_scoring(tmp_path, script):
    """train_db.py and sdxl_train.py split (the same split_train_val) but never compute a validation loss:
    evaluation.score = false, so the run trains on kohya's images and evaluates nothing."""
    case = MIXED[1]
    model = SD15 if script == "train_db" else SDXL
    command = (
        f"{script}.py --pretrained_model_name_or_path={model} {_mixed(tmp_path, case)} --max_train_steps=20"
    )
    outcome = kohya(tmp_path, command=command)
    plan = plan_of(outcome, tmp_path)
    e = plan.evaluation
    assert "eval_loss" not in e.metrics and not e.scored and e.timesteps == () and len(e.steps) == 0
    assert e.log == "mean"
    for k in range(len(case["sizes"])):
        _assert_kohyas_split(plan, dict(case, trained=[case["trained"][k]], scored=[case["scored"][k]]), [k])
    assert "score = false" in outcome.text
    assert not any(
        "validation noise" in n for n in outcome.conversion.notes
    )  # nothing scored: no noise to differ
