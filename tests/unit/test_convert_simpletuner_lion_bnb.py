"""SimpleTuner's bitsandbytes Lion optimizers (helpers/training/optimizer_param.py): `bnb-lion8bit`,
`bnb-lion-paged`, `bnb-lion8bit-paged` build bitsandbytes.optim.Lion8bit, PagedLion, PagedLion8bit as
`cls(params, lr=learning_rate, **default_settings)`, default_settings betas (0.9, 0.99), weight_decay 0.0
and min_8bit_size 4096, replaced by optimizer_config keys and by betas when both optimizer_beta1 and
optimizer_beta2 are given (convert_arg_to_parameters)."""

from __future__ import annotations

import json

import pytest

from convert_kit import (
    SD15,
    codes,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    fate,
    images,
    plan_of,
    simpletuner,
    write,
)

BACKENDS = [
    {
        "id": "subject",
        "type": "local",
        "instance_data_dir": "data/subject",
        "caption_strategy": "instanceprompt",
        "instance_prompt": "a photo of sks dog",
        "resolution": 512,
        "resolution_type": "pixel_area",
    },
    {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "c"},
]


def _convert(tmp_path, **config):
    images(tmp_path / "data" / "subject", 3, (512, 512))
    base = {
        "--model_type": "lora",
        "--model_family": "sd1x",
        "--pretrained_model_name_or_path": SD15,
        "--learning_rate": "3e-5",
        "--lr_scheduler": "constant",
        "--max_train_steps": 500,
        "--train_batch_size": 1,
        "--data_backend_config": "config/multidatabackend.json",
    }
    write(tmp_path / "config" / "config.json", json.dumps({**base, **config}))
    write(tmp_path / "config" / "multidatabackend.json", json.dumps(BACKENDS))
    outcome = simpletuner(tmp_path, "config/config.json", None)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    differences = [d.message for d in outcome.diagnostics if d.code == "DBS404"]
    assert not [m for m in differences if "optimi" in m or "beta" in m], (
        differences
    )  # (bucket sizes do differ)
    return outcome


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("bnb-lion8bit", "lion8bit"),
        ("bnb-lion-paged", "paged_lion"),
        ("bnb-lion8bit-paged", "paged_lion8bit"),
    ],
)
def test_each_bnb_lion_converts_to_its_kind_with_simpletuners_defaults(tmp_path, name, kind):
    outcome = _convert(tmp_path, **{"--optimizer": name})
    assert fate(outcome, "optimizer") == "mapped"
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.lr, o.betas, o.weight_decay) == (kind, 3e-5, (0.9, 0.99), 0.0)


@pytest.mark.parametrize("name", ["bnb-lion", "optimi-lion"])
def test_the_32bit_lions_get_simpletuners_lion_defaults_too(tmp_path, name):
    """bitsandbytes' Lion and optimi's Lion also start from betas (0.9, 0.99) and no weight decay in
    SimpleTuner (they converted with dbspec's AdamW-like defaults 0.9/0.999 and 0.01 before)."""
    o = plan_of(_convert(tmp_path, **{"--optimizer": name}), tmp_path).optimizer
    assert (o.kind, o.betas, o.weight_decay) == ("lion", (0.9, 0.99), 0.0)


def test_both_betas_and_optimizer_config_replace_the_defaults(tmp_path):
    outcome = _convert(
        tmp_path,
        **{
            "--optimizer": "bnb-lion8bit",
            "--optimizer_beta1": 0.95,
            "--optimizer_beta2": 0.98,
            "--optimizer_config": "weight_decay=0.1",
        },
    )
    o = plan_of(outcome, tmp_path).optimizer
    assert (o.kind, o.betas, o.weight_decay) == ("lion8bit", (0.95, 0.98), 0.1)


def test_a_lone_beta_is_ignored_as_simpletuner_ignores_it(tmp_path):
    outcome = _convert(tmp_path, **{"--optimizer": "bnb-lion8bit-paged", "--optimizer_beta1": 0.95})
    assert fate(outcome, "optimizer_beta1") == "inert"
    assert plan_of(outcome, tmp_path).optimizer.betas == (0.9, 0.99)
