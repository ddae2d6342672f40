"""Random legacy inputs never crash the converters, and whatever they write passes `dbspec check`.

Seeded, so failures reproduce: each case combines a valid base with random options and values (right types,
wrong types, zeros, negatives) from the converters' own argument tables.
"""

from __future__ import annotations

import json
import random

import pytest

from convert_kit import SD15, SDXL, diffusers, empty_hub_cache, images, kohya, out_path, simpletuner, write  # noqa: F401
from dbspec.convert.kohya import schema as ks
from dbspec.convert.diffusers.args import arg_table as diffusers_table
from dbspec.convert.kohya.args import arg_table as kohya_table
from dbspec.convert.simpletuner.convert import DEFAULTS as SIMPLETUNER_DEFAULTS
from dbspec.frontend import check_spec

TEXT = {
    "int": ["1", "0", "3", "500", "-1", "x"],
    "float": ["0.5", "1e-4", "0", "2", "-3"],
    "str": ["x", "cosine", "ddim", "AdamW", "prodigy", "fp16", "wandb", "DDPMScheduler"],
    "int_or_float": ["0.1", "10", "0", "5%"],
    "list": ["a=1", "weight_decay=0.1", "3"],
}
CASES = 25


@pytest.fixture
def folders(tmp_path):
    images(tmp_path / "train" / "5_sks", 3, (640, 512))
    images(tmp_path / "reg" / "1_dog", 5, (512, 512), prefix="r")
    return tmp_path


def _options(rng: random.Random, table: dict, count: int, skip: tuple = ()) -> list[str]:
    out = []
    for name in rng.sample(sorted(n for n in table if n not in skip), count):
        arg = table[name]
        if arg.kind == "flag":
            out.append(f"--{name}")
        else:
            value = rng.choice([c for c in arg.choices if c is not None] or TEXT[arg.kind])
            out.append(f"--{name}={value}")
    return out


def _written_specs_check(tmp_path, outcome) -> None:
    if outcome.written:
        problems = [d for d in check_spec(out_path(tmp_path)).diagnostics if d.severity == "error"]
        assert not problems, problems
    else:
        assert outcome.exit_code == 1


@pytest.mark.parametrize("script", ["train_db", "sdxl_train", "train_network", "sdxl_train_network"])
def test_random_kohya_command_lines(folders, script):
    rng = random.Random(script)
    table = kohya_table(script)
    base = (
        f"--pretrained_model_name_or_path={SDXL if 'sdxl' in script else SD15} --train_data_dir=train "
        f"--reg_data_dir=reg --resolution={1024 if 'sdxl' in script else 512} --network_module=networks.lora"
    )
    for _ in range(CASES):
        options = _options(rng, table, 6, skip=("config_file", "dataset_config", "output_config"))
        command = f"{script}.py {base} " + " ".join(f"'{o}'" for o in options)
        _written_specs_check(folders, kohya(folders, command=command, allow=rng.random() < 0.5))


@pytest.mark.parametrize(
    "script", ["train_dreambooth", "train_dreambooth_lora", "train_dreambooth_lora_sdxl"]
)
def test_random_diffusers_command_lines(folders, script):
    rng = random.Random(script)
    table = diffusers_table(script)
    for _ in range(CASES):
        options = _options(rng, table, 6)
        command = (
            f"{script}.py --pretrained_model_name_or_path={SD15} --instance_data_dir=train/5_sks "
            "--instance_prompt=sks " + " ".join(f"'{o}'" for o in options)
        )
        _written_specs_check(folders, diffusers(folders, command, allow=rng.random() < 0.5))


def test_random_kohya_dataset_configs(folders):
    rng = random.Random(7)
    values = {int: [0, 1, 3, 64, 512], float: [0.0, 0.5], str: ["", ".txt", "x"], bool: [True, False]}

    def sample(kind):
        if kind in (ks.PAIR_INT, ks.PAIR_FLOAT, ks.DICT):
            return {ks.PAIR_INT: [512, [1024, 256], 500], ks.PAIR_FLOAT: [[1.0, 2.0]], ks.DICT: [{}]}[kind][0]
        return rng.choice(values[kind[-1]])

    for _ in range(CASES):
        dataset = {k: sample(v) for k, v in rng.sample(sorted(ks.DATASET_KEYS.items()), 3)}
        dataset.setdefault("resolution", 512)
        dataset["subsets"] = [
            {
                **{k: sample(v) for k, v in rng.sample(sorted(ks.subset_keys("dreambooth").items()), 3)},
                "image_dir": folder,
                "class_tokens": "sks",
            }
            for folder in ("train/5_sks", "reg/1_dog")
        ]
        write(folders / "d.json", json.dumps({"datasets": [dataset]}))
        command = (
            f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora "
            "--dataset_config d.json"
        )
        _written_specs_check(folders, kohya(folders, command=command, allow=rng.random() < 0.5))


def test_random_simpletuner_configs(folders):
    rng = random.Random(11)
    pool = [
        None,
        0,
        1,
        -1,
        0.5,
        "abc",
        "1e-4",
        True,
        "sdxl",
        "lora",
        "full",
        "cosine",
        "prodigy",
        "int8-quanto",
        "bf16",
        "pixel",
    ]
    backend_values = {
        "instance_data_dir": ["train/5_sks", "reg/1_dog"],
        "caption_strategy": ["instanceprompt", "parquet"],
        "repeats": [0, 5, -2, "3", "x"],
        "resolution": [512, 1024, 500, "x"],
        "crop": [True, "False"],
        "crop_aspect": ["square", "preserve"],
        "crop_style": ["center", "face"],
        "is_regularisation_data": [True, False],
        "minimum_image_size": [64, "x"],
        "probability": [1, 0.5],
    }
    for _ in range(CASES):
        config = {
            "model_family": rng.choice(["sdxl", "sd1x", "legacy"]),
            "pretrained_model_name_or_path": SD15,
        }
        config.update({k: rng.choice(pool) for k in rng.sample(sorted(SIMPLETUNER_DEFAULTS), 6)})
        backends = [
            {
                "id": f"b{i}",
                "instance_prompt": "sks",
                **{k: rng.choice(v) for k, v in rng.sample(sorted(backend_values.items()), 6)},
            }
            for i in range(2)
        ]
        write(folders / "c.json", json.dumps(config))
        write(folders / "b.json", json.dumps(backends))
        _written_specs_check(folders, simpletuner(folders, "c.json", "b.json", allow=rng.random() < 0.5))
