"""kohya's validation settings (validation_split, validation_seed, validate_every_n_steps/_epochs,
max_validation_steps) -> the evaluation holdout (dbspec/convert/kohya/evaluation.py)."""

from __future__ import annotations

import pytest
from convert_kit import (
    SD15,
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


# (images, validation_split) -> images kohya's training part leaves out: n - len(split_train_val(...)[0]),
# reference numbers from running kohya's own split_train_val (48d368fa).
@pytest.mark.parametrize(("count", "split", "held"), [(8, 0.25, 2), (10, 0.3, 3), (5, 0.3, 1), (7, 0.5, 3)])
def test_validation_split_holds_out_the_images_kohya_does_not_train(tmp_path, count, split, held):
    images(tmp_path / "x" / "1_ohwx dog", count, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --validation_split {split} --validation_seed 3")
    plan = plan_of(outcome, tmp_path)
    e = plan.evaluation
    assert len(e.holdout) == held and e.seed == 3 and len(e.timesteps) == 4
    assert sum(len(d.images) for d in plan.datasets) == count - held
    assert fate(outcome, "validation_split") == "differs" and fate(outcome, "validation_seed") == "differs"


def test_a_split_too_small_to_hold_out_an_image_differs(tmp_path):
    images(tmp_path / "x" / "1_ohwx dog", 3, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --validation_split 0.2")
    plan = plan_of(outcome, tmp_path)  # kohya trains ceil(3 x 0.8) = 3 images
    assert plan.evaluation.metrics == () and fate(outcome, "validation_split") == "differs"


def test_validate_every_n_steps_becomes_the_validation_interval(tmp_path):
    images(tmp_path / "x" / "1_ohwx dog", 8, (512, 512))
    command = f"{LORA} --validation_split 0.25 --validate_every_n_steps 50 --max_validation_steps 2"
    outcome = kohya(tmp_path, command=command)
    plan = plan_of(outcome, tmp_path)
    assert tuple(plan.evaluation.steps) == (50, 100, 150, 200)
    assert fate(outcome, "validate_every_n_steps") == "mapped"
    assert fate(outcome, "max_validation_steps") == "differs"


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


def test_train_db_splits_without_scoring_and_dbspec_says_it_scores_them(tmp_path):
    images(tmp_path / "img", 8, (512, 512))
    write(
        tmp_path / "d.toml",
        '[[datasets]]\nresolution = 512\nvalidation_split = 0.25\n[[datasets.subsets]]\nimage_dir = "img"\n'
        'class_tokens = "ohwx dog"\n',
    )
    command = (
        f"train_db.py --pretrained_model_name_or_path={SD15} --dataset_config d.toml --max_train_steps=20"
    )
    outcome = kohya(tmp_path, command=command)
    plan = plan_of(outcome, tmp_path)
    assert len(plan.evaluation.holdout) == 2
    assert any("train_db.py removes the validation_split images" in n for n in outcome.conversion.notes)
