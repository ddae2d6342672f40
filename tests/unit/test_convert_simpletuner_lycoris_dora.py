"""SimpleTuner's `lora_type = "lycoris"` with LyCORIS's DoRA: its lycoris_config JSON's `dora_wd` and
`wd_on_output` reach LyCORIS's create_lycoris (lycoris/wrapper.py), which reads both with str_bool (only
"false", any case, is off; a JSON true or false reads as "True" / "False"). Each config is one SimpleTuner
would train; the expectation is what create_lycoris builds: weight_decompose on every module of the algo,
wd_on_out as given."""

from __future__ import annotations

import json

import pytest

from convert_kit import (
    SDXL,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    fate,
    images,
    plan_of,
    simpletuner,
    write,
)

CONFIG = {
    "model_type": "lora",
    "lora_type": "lycoris",
    "lycoris_config": "config/lycoris_config.json",
    "model_family": "sdxl",
    "pretrained_model_name_or_path": SDXL,
    "learning_rate": 1e-4,
    "max_train_steps": 10,
}
BACKEND = {
    "id": "dog",
    "type": "local",
    "instance_data_dir": "img",
    "caption_strategy": "instanceprompt",
    "instance_prompt": "a photo of sks dog",
    "cache_dir_vae": "cache/vae/dog",
    "resolution": 1024,
}
PRESET = {"target_module": ["Attention", "FeedForward"]}


def _convert(tmp_path, lycoris: dict):
    images(tmp_path / "img", 3, (1024, 1024))
    write(tmp_path / "config" / "config.json", json.dumps(CONFIG))
    write(tmp_path / "config" / "multidatabackend.json", json.dumps([BACKEND]))
    write(tmp_path / "config" / "lycoris_config.json", json.dumps({"apply_preset": PRESET, **lycoris}))
    outcome = simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json")
    assert outcome.exit_code == 0 and outcome.written, errors(outcome)
    return outcome


@pytest.mark.parametrize(
    ("lycoris", "kind", "axis"),
    [
        (
            {"algo": "lokr", "linear_dim": 10000, "linear_alpha": 1, "factor": 16, "dora_wd": True},
            "lokr",
            "output",
        ),
        (
            {"algo": "loha", "linear_dim": 8, "linear_alpha": 4, "dora_wd": True, "wd_on_output": False},
            "loha",
            "input",
        ),
        ({"algo": "locon", "linear_dim": 16, "linear_alpha": 8, "dora_wd": "true"}, "lora", "output"),
        ({"algo": "lora", "dora_wd": True, "wd_on_output": "False"}, "lora", "input"),
        ({"algo": "lokr", "factor": 8, "dora_wd": True, "wd_on_output": 0}, "lokr", "output"),  # "0" is true
    ],
)
def test_lycoris_config_dora_converts_to_lycoris_weight_decomposition(tmp_path, lycoris, kind, axis):
    outcome = _convert(tmp_path, lycoris)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_axis, a.dora_form) == (kind, True, axis, "lycoris")
    assert fate(outcome, "lycoris.dora_wd") == "mapped"


@pytest.mark.parametrize(
    "lycoris", [{"dora_wd": False}, {"dora_wd": "False", "wd_on_output": False}, {"wd_on_output": False}]
)
def test_dora_off_or_wd_on_output_alone_changes_nothing(tmp_path, lycoris):
    outcome = _convert(tmp_path, {"algo": "lokr", "factor": 8, **lycoris})
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_axis) == (False, "output")
    assert all(fate(outcome, f"lycoris.{key}") == "inert" for key in lycoris)


@pytest.mark.parametrize(("value", "unbalanced"), [(True, True), ("true", True), (0, True), (False, False)])
def test_lokr_unbalanced_factorization_maps(tmp_path, value, unbalanced):
    """create_lycoris reads `unbalanced_factorization` with its str_bool (only "false" is off) and hands it to
    LokrModule, which swaps the output split."""
    outcome = _convert(tmp_path, {"algo": "lokr", "factor": 16, "unbalanced_factorization": value})
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.factor, a.unbalanced_factorization, a.lokr_factorization) == (
        "lokr",
        16,
        unbalanced,
        "lycoris",
    )
