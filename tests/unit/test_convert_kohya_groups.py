"""kohya configs with several [[datasets]] convert to dataset groups whose plan batches like kohya.

The expected numbers come from kohya-ss sd-scripts' own code, not from dbspec: tests/unit/kohya_groups/
reference.json was written by make_reference.py, which runs kohya's DreamBoothDataset (reg balancing),
make_buckets and DatasetGroup on the same folders (cases.py) at the commit the file names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convert_kit import SD15, empty_hub_cache, kohya, messages, plan_of, write  # noqa: F401 (a fixture)
from kohya_groups.cases import CASES, dataset_toml, write_images

REFERENCE = json.loads((Path(__file__).parent / "kohya_groups" / "reference.json").read_text())["cases"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_plan_batches_and_balances_as_kohya_does(tmp_path, name):
    case, expected = CASES[name], REFERENCE[name]
    write_images(tmp_path, case)
    write(tmp_path / "d.toml", dataset_toml(case))
    command = (
        f"train_db.py --pretrained_model_name_or_path {SD15} --max_train_epochs {case['max_train_epochs']} "
        f"--gradient_accumulation_steps {case['gradient_accumulation_steps']}"
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=command)
    assert not messages(outcome, "DBS403") and not messages(outcome, "DBS404")  # nothing differs any more
    plan = plan_of(outcome, tmp_path)
    s = plan.schedule
    assert s.class_samples_per_epoch == expected["reg_samples"]
    assert s.batches_per_epoch == expected["batches_per_epoch"]
    assert s.steps_per_epoch == expected["steps_per_epoch"]
    assert s.total_steps == expected["max_train_steps"]
    groups = {g.name: g for g in plan.groups}
    for index, (d, want) in enumerate(zip(case["datasets"], expected["datasets"])):
        if not want["instance_samples"]:  # kohya trains nothing of a reg-only [[datasets]]: no group
            assert f"datasets{index}" not in groups
            continue
        group = groups[f"datasets{index}"]
        assert group.batch_size == d["batch_size"]
        assert (group.instance_samples, group.class_samples) == (
            want["instance_samples"],
            want["reg_samples"],
        )
        assert group.batches_per_epoch == want["batches"]


def test_three_groups_would_differ_pooled():
    """The reference is not trivially what one pooled group gives: pooled, reg images balance against every
    dataset's training images and buckets pool across batch sizes."""
    ref = REFERENCE["three_groups"]
    assert len(ref["datasets"]) == 3
    assert len({(d["instance_samples"], d["batches"]) for d in ref["datasets"]}) == 3
