"""kohya's per-dataset validation_seed (datasets.eval_seed) and its validation loader's order with
max_validation_steps (evaluation.order = "kohya_loader", max_batches; dbspec/plan/kohya_loader.py), converted
from realistic dataset configs and checked against kohya's own dataset code run on the same folders (how:
tests/unit/kohya_loader.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from convert_kit import (
    SD15,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    fate,
    kohya,
    plan_of,
    write,
)
from PIL import Image

from dbspec.plan.kohya_loader import first_batches, loader_batches
from tests.runtime.runspec import summary_text

FIXTURE = json.loads((Path(__file__).parent / "kohya_loader.json").read_text())
CASES = FIXTURE["cases"]
SEEDS = CASES[:3]  # several validation_seed values (and one dataset on the training seed's stream)
LOADER = CASES[3:]  # batches, subsets sharing a batch, buckets, two datasets with their batch sizes


def _config(tmp: Path, case: dict) -> None:
    """The case's kohya dataset config, one [[datasets]] per case dataset, its folders d<k>s<j>."""
    text = '[general]\nresolution = 512\ncaption_extension = ".caption"\n'
    for k, d in enumerate(case["datasets"]):
        text += "[[datasets]]\n"
        text += f"batch_size = {d.get('batch_size', 1)}\n"
        if d.get("enable_bucket"):
            text += "enable_bucket = true\nmin_bucket_reso = 256\nmax_bucket_reso = 1024\n"
            text += "bucket_reso_steps = 64\n"
        text += f"validation_split = {d['validation_split']!r}\n"
        if d.get("validation_seed") is not None:
            text += f"validation_seed = {d['validation_seed']}\n"
        for j, s in enumerate(d["subsets"]):
            folder = tmp / f"d{k}s{j}"
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(s["sizes"]):
                Image.new("RGB", (w, h)).save(folder / f"img{i:03d}.png")
            text += f'[[datasets.subsets]]\nimage_dir = "d{k}s{j}"\nclass_tokens = "ohwx dog"\n'
    write(tmp / "d.toml", text)


def _convert(tmp: Path, case: dict, extra: str = ""):
    _config(tmp, case)
    command = (
        f"train_network.py --pretrained_model_name_or_path={SD15} --dataset_config d.toml "
        f"--network_module=networks.lora --max_train_steps=60 --seed {case['seed']} {extra}"
    )
    return kohya(tmp, command=command)


def _name(img) -> str:
    return f"{Path(img.path).parent.name}/{Path(img.path).name}"


@pytest.mark.parametrize(
    "case", SEEDS, ids=lambda c: "-".join(str(d.get("validation_seed")) for d in c["datasets"])
)
def test_each_datasets_validation_seed_draws_kohyas_split(tmp_path, case):
    """Each kohya [[datasets]] draws its split from its own validation_seed (datasets.eval_seed where it is
    not the one evaluation.seed reseeds with); an unseeded one draws on the training seed's stream."""
    outcome = _convert(tmp_path, case)
    plan = plan_of(outcome, tmp_path)  # passes dbspec check, no --allow-unsupported
    e = plan.evaluation
    assert [_name(img) for img in e.holdout] == [n for scored in case["scored"] for n in scored]
    trained = sorted(_name(img) for d in plan.datasets for img in d.images)
    assert trained == sorted(n for names in case["trained"] for n in names)
    per_subset = [d.get("validation_seed") for d in case["datasets"] for _ in d["subsets"]]
    stream = any(s is None for s in per_subset)
    assert e.dataset_seeds == tuple(-1 if s is None else s for s in per_subset)
    assert e.split_draw == ("stream" if stream else "reseed")
    reports = outcome.conversion.reports
    assert not [r for r in reports.values() if r.fate == "differs" and "validation" in r.key]
    assert all(
        fate(outcome, f"datasets[{k}].validation_seed") == "mapped"
        for k, d in enumerate(case["datasets"])
        if d.get("validation_seed") is not None
    )


def test_eval_seed_is_in_the_converted_spec_and_the_summary(tmp_path):
    outcome = _convert(tmp_path, SEEDS[0])
    assert "eval_seed = 5" in outcome.text
    text = summary_text(plan_of(outcome, tmp_path))
    assert "seed per dataset" in text and "`d1s0` 5" in text


def _loader_images(case: dict, most: int) -> list[str]:
    return [n for batch in case["loader_batches"][:most] for n in batch]


@pytest.mark.parametrize("case", LOADER, ids=lambda c: f"{len(c['loader_batches'])}-batches-seed{c['seed']}")
@pytest.mark.parametrize("most", [1, 2, 3])
def test_max_validation_steps_scores_kohyas_first_batches(tmp_path, case, most):
    """With max_data_loader_n_workers = 0, max_validation_steps = N scores the images of kohya's first N
    validation batches (its buckets, batches and shuffle), an image once per time kohya scores it."""
    outcome = _convert(tmp_path, case, f"--max_data_loader_n_workers 0 --max_validation_steps {most}")
    plan = plan_of(outcome, tmp_path)
    e = plan.evaluation
    assert e.order == "kohya_loader" and e.max_batches == most and e.max_images == 0
    assert [_name(e.holdout[i]) for i in e.scored_order] == _loader_images(case, most)
    assert fate(outcome, "max_validation_steps") == "mapped"
    assert 'order = "kohya_loader"' in outcome.text


def test_loader_batches_without_a_cap_are_every_batch():
    """The pure function on kohya's split order: every batch, in kohya's order (the one-bucket case)."""
    case = LOADER[1]
    scored = [n for names in case["scored"] for n in names]
    batches = loader_batches([0] * len(scored), [(512, 512)] * len(scored), [1] * len(scored), {0: 2})
    assert [[scored[i] for i in b] for b in batches] == case["loader_batches"]
    assert [scored[i] for i in first_batches(batches, 0)] == _loader_images(case, len(batches))


def test_with_loader_workers_the_cap_still_differs(tmp_path):
    """Each DataLoader worker's collator reshuffles its copy of the dataset after its first fetch, with a
    seed from the global random: kept DBS404."""
    outcome = _convert(tmp_path, LOADER[0], "--max_data_loader_n_workers 2 --max_validation_steps 2")
    assert fate(outcome, "max_validation_steps") == "differs"
    plan = plan_of(outcome, tmp_path)
    assert plan.evaluation.order == "split" and plan.evaluation.max_images == 2


def test_train_data_dir_sub_folders_keep_the_cap_a_difference(tmp_path):
    """kohya makes train_data_dir's subsets in the file system's sub-folder order (Path.iterdir), which its
    loader's image order follows; dbspec's datasets come in sorted names: still DBS404 with two sub-folders,
    exact with one."""
    base = (
        f"train_network.py --pretrained_model_name_or_path={SD15} --train_data_dir=x --resolution=512 "
        "--network_module=networks.lora --max_train_steps=60 --validation_split 0.5 --validation_seed 3 "
        "--max_data_loader_n_workers 0 --max_validation_steps 2"
    )
    for name in ("1_ohwx dog", "2_ohwx dog"):
        folder = tmp_path / "x" / name
        folder.mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (512, 512)).save(folder / f"img{i:03d}.png")
    outcome = kohya(tmp_path, command=base)
    assert fate(outcome, "max_validation_steps") == "differs"
    assert plan_of(outcome, tmp_path).evaluation.max_batches == 2
    (tmp_path / "x" / "2_ohwx dog").rename(tmp_path / "2_ohwx dog")
    outcome = kohya(tmp_path, command=base)
    assert fate(outcome, "max_validation_steps") == "mapped"
