"""The evaluation pass (dbspec/compiler/evaluation.py): the seeded holdout, fixed timesteps and bands, the
subject words and CLIP-T prompts, metric models resolved offline, and the plan-time diagnostics."""

from __future__ import annotations

import random

import attrs
import pytest

from dbspec.compiler.evaluation import band_starts, clip_t_prompt, fixed_timesteps, subject_words
from dbspec.frontend import plan_spec
from dbspec.plan.model import NoisePlan
from dbspec.spec.model import Dataset, Evaluation, Model, Spec
from tests.runtime.runspec import CPU, compile_spec, write_spec

NOISE = NoisePlan(
    offset=0.0,
    offset_random_strength=False,
    adaptive_scale=0.0,
    multires_iterations=0,
    multires_discount=0.0,
    ip_gamma=0.0,
    ip_random_strength=False,
    min_timestep=0,
    max_timestep=1000,
)
VALIDATION = '[validation]\nevery = 2\nprompts = ["a photo of ohwx toy on a table", "a photo of a toy"]\n'
TINY_MODELS = 'clip_model = "builtin:tiny-clip"\ndino_model = "builtin:tiny-dino"\n'


def test_fixed_timesteps_are_the_midpoints_of_equal_slices_of_the_window():
    assert fixed_timesteps(4, NOISE) == (125, 375, 625, 875)
    window = attrs.evolve(NOISE, min_timestep=200, max_timestep=400)
    assert fixed_timesteps(2, window) == (250, 350)
    assert fixed_timesteps(1, NOISE) == (500,)


def test_bands_split_the_timesteps_into_contiguous_near_equal_slices():
    assert band_starts(8, 4) == (0, 2, 4, 6)
    assert band_starts(5, 2) == (0, 2)
    assert band_starts(3, 3) == (0, 1, 2)


def _spec(instance: str, klass: str, **ev) -> Spec:
    return Spec(
        spec_version=2,
        model=Model(base="builtin:tiny-sd1"),
        datasets=[
            Dataset(name="a", path="a", prompt=instance),
            Dataset(name="b", path="b", role="class", prompt=klass),
        ],
        evaluation=Evaluation(**ev),
    )


@pytest.mark.parametrize(
    ("instance", "klass", "ev", "expected"),
    [
        ("a photo of ohwx dog", "a photo of a dog", {}, ("ohwx", "dog")),
        ("portrait of ohwx man", "portrait of a man", {}, ("ohwx", "man")),
        ("a photo of sks person", "a photo of a dog", {}, ("", "")),  # two words differ: ambiguous
        ("a photo of sks person", "a photo of a dog", {"identifier": "sks"}, ("sks", "")),
        ("a photo of ohwx dog", "a photo of a dog", {"class_word": "puppy"}, ("ohwx", "puppy")),
    ],
)
def test_subject_words_come_from_the_spec_or_the_one_word_the_prompts_differ_by(
    instance, klass, ev, expected
):
    assert subject_words(_spec(instance, klass, **ev)) == expected


def test_clip_t_prompts_replace_the_identifier_and_its_class_word_by_the_class_word():
    assert clip_t_prompt("a photo of ohwx dog on a beach", "ohwx", "dog") == "a photo of dog on a beach"
    assert clip_t_prompt("ohwx swimming", "ohwx", "dog") == "dog swimming"
    assert clip_t_prompt("a photo of a dog", "ohwx", "dog") == "a photo of a dog"
    assert clip_t_prompt("a sohwxy thing", "ohwx", "dog") == "a sohwxy thing"  # whole words only


def test_the_holdout_is_a_seeded_split_the_plan_lists_and_never_trains(tmp_path):
    extra = VALIDATION + "[evaluation]\nholdout = 2\nseed = 7\ntimesteps = 4\nbands = 2\n"
    plan = compile_spec(write_spec(tmp_path, steps=4, extra=extra))
    e = plan.evaluation
    every = sorted(img.name for img in (tmp_path / "data" / "toy").iterdir() if img.suffix == ".png")
    expected = sorted(every[i] for i in random.Random(7).sample(range(len(every)), 2))  # the documented split
    assert [img.rel for img in e.holdout] == expected
    trained = {img.rel for d in plan.datasets for img in d.images}
    assert trained.isdisjoint(expected) and len(trained) == len(every) - 2
    assert plan.datasets[e.dataset].samples_per_epoch == 2 * (len(every) - 2)  # repeats = 2
    assert all(not img.latent_keys and not img.text_key for img in e.holdout)  # never cached
    assert e.metrics == ("eval_loss",) and e.timesteps == (125, 375, 625, 875) and e.bands == (0, 2)
    assert tuple(e.steps) == (2, 4)
    assert e.cost and "4 denoiser forward" not in e.cost[0] and "8 denoiser forward" in e.cost[0]


def test_the_plan_lists_metrics_subject_prompts_references_and_models(tmp_path):
    extra = VALIDATION + '[evaluation]\nmetrics = ["clip_t", "clip_i", "dino"]\n' + TINY_MODELS
    plan = compile_spec(write_spec(tmp_path, steps=4, with_class=True, extra=extra))
    e = plan.evaluation
    assert e.metrics == ("clip_t", "clip_i", "dino") and not e.holdout
    assert (e.identifier, e.class_word) == ("ohwx", "toy")
    assert e.clip_t_prompts == ("a photo of toy on a table", "a photo of a toy")
    assert e.subject_prompts == (0,)
    assert len(e.references) == 6 and all(p.endswith(".png") for p in e.references)
    assert e.clip_model.source == "builtin" and e.dino_model.id == "builtin:tiny-dino"


def test_a_preserve_output_dataset_is_not_the_subject(tmp_path):
    """Its samples train towards the base model (datasets[].preserve_output): the default holdout, the subject
    words and the reference images come from the other instance dataset, even when it is listed first."""
    subject = '[[datasets]]\nname = "subject"\npath = "data/class-toy"\nprompt = "a photo of sks toy"\n'
    extra = (
        subject
        + 'resolution = 64\n[adapter]\nkind = "lora"\n'
        + VALIDATION.replace("ohwx", "sks")
        + '[evaluation]\nholdout = 1\nmetrics = ["clip_i"]\n'
        + TINY_MODELS
    )
    spec = write_spec(tmp_path, steps=4, dataset_extra="preserve_output = true", extra=extra, with_class=True)
    plan = compile_spec(spec)
    assert [(d.name, d.preserve_output) for d in plan.datasets] == [
        ("toy", True),
        ("toys", False),
        ("subject", False),
    ]
    e = plan.evaluation
    assert e.dataset == 2 and e.identifier == "sks"
    subject_images = {img.name for img in (tmp_path / "data" / "class-toy").iterdir() if img.suffix == ".png"}
    assert {p.rsplit("/", 1)[-1] for p in e.references} == subject_images


def _codes(tmp_path, extra: str, **kw) -> list[tuple[str, str]]:
    path = write_spec(tmp_path, **{"steps": 4, **kw}, extra=extra)
    planned = plan_spec(path, CPU, str(path), [])
    return [(d.code, d.severity) for d in planned.diagnostics if d.code >= "DBS364" and d.code <= "DBS367"]


def test_a_holdout_taking_every_image_is_an_error(tmp_path):
    assert _codes(tmp_path, "[evaluation]\nholdout = 6\n") == [("DBS364", "error")]


def test_a_holdout_dataset_that_is_no_instance_dataset_is_an_error(tmp_path):
    extra = '[evaluation]\nholdout = 1\nholdout_dataset = "toys"\n'
    assert _codes(tmp_path, extra, with_class=True) == [("DBS365", "error")]


def test_a_metric_model_not_in_the_local_cache_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    extra = VALIDATION + '[evaluation]\nmetrics = ["dino"]\n'
    assert _codes(tmp_path, extra, with_class=True) == [("DBS366", "error")]


def test_a_metric_model_folder_is_used_as_it_is(tmp_path):
    folder = tmp_path / "dino"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    extra = VALIDATION + f'[evaluation]\nmetrics = ["dino"]\ndino_model = "{folder}"\n'
    plan = compile_spec(write_spec(tmp_path, steps=4, with_class=True, extra=extra))
    assert plan.evaluation.dino_model.source == "folder" and plan.evaluation.dino_model.path == str(folder)


@pytest.mark.parametrize(("validate_every", "warned"), [(3, True), (2, False), (4, False)])
def test_select_with_only_the_end_evaluated_among_checkpoints_warns(tmp_path, validate_every, warned):
    extra = (
        f'[validation]\nevery = {validate_every}\nprompts = ["x"]\n[evaluation]\nholdout = 1\n'
        '[checkpoints]\nevery = 2\nselect = "eval_loss"\n'
    )
    assert (("DBS367", "warning") in _codes(tmp_path, extra, steps=5)) is warned


def test_evaluation_off_leaves_the_plan_as_before(tmp_path):
    plan = compile_spec(write_spec(tmp_path, steps=4))
    assert plan.evaluation.metrics == () and plan.checkpoints.select == "none"


EVAL_DATASET = """
[[datasets]]
name = "held"
role = "eval"
path = "data/eval"
prompt = "a photo of ohwx toy"
resolution = 64
"""


def test_an_eval_dataset_is_scored_and_never_trained(tmp_path):
    import shutil

    path = write_spec(tmp_path, steps=4, extra=VALIDATION + '[checkpoints]\nselect = "eval_loss"\n')
    (tmp_path / "data" / "eval").mkdir()
    for name in ("toy-00.png", "toy-01.png"):
        shutil.copy(tmp_path / "data" / "toy" / name, tmp_path / "data" / "eval" / f"held-{name}")
    path.write_text(path.read_text() + EVAL_DATASET)
    plan = compile_spec(path)
    assert [img.rel for img in plan.evaluation.holdout] == ["held-toy-00.png", "held-toy-01.png"]
    assert [d.name for d in plan.datasets] == ["toy"] and len(plan.datasets[0].images) == 6
    assert plan.evaluation.metrics == ("eval_loss",) and plan.evaluation.dataset == -1
    assert plan.evaluation.holdout[0].caption == "a photo of ohwx toy"
