"""SimpleTuner's `lora_type = "lycoris"` with per-class LoKr factors: the recipe SimpleTuner's docs give
(`linear_dim` 10000, `apply_preset.module_algo_map = {"Attention": {"factor": 16}, "FeedForward": {"factor":
8}}`). create_lycoris (lycoris/wrapper.py) hands a class entry's keys to the modules of that class's layers
before the network's, so each class splits at its own factor; at a dim of 10000 LokrModule trains both
Kronecker factors in full at scale 1. tests/runtime/test_simpletuner_lycoris_factors.py builds both on a
tiny U-Net and compares the modules."""

from __future__ import annotations

import json
import re

import pytest

from tests.unit.convert_kit import (
    SDXL,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    images,
    messages,
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
# SimpleTuner's documented LoKr recipe (documentation/LYCORIS.md)
RECIPE = {
    "algo": "lokr",
    "multiplier": 1.0,
    "linear_dim": 10000,
    "linear_alpha": 1,
    "factor": 16,
    "apply_preset": {
        "target_module": ["Attention", "FeedForward"],
        "module_algo_map": {"Attention": {"factor": 16}, "FeedForward": {"factor": 8}},
    },
}
ATTENTION = r"(?:^|\.)(?:to_q|to_k|to_v|to_out\.0)$"
FEED_FORWARD = r"(?:^|\.)(?:ff\.net\.0\.proj|ff\.net\.2)$"


def convert(tmp_path, lycoris: dict, *, allow: bool = False, config: dict = CONFIG):
    images(tmp_path / "img", 3, (1024, 1024))
    write(tmp_path / "config" / "config.json", json.dumps(config))
    write(tmp_path / "config" / "multidatabackend.json", json.dumps([BACKEND]))
    write(tmp_path / "config" / "lycoris_config.json", json.dumps(lycoris))
    return simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json", allow=allow)


def test_documented_recipe_gives_the_feed_forward_its_factor(tmp_path):
    """The FeedForward layers split at 8 (a block at rank 1024, alpha 1024: full in both factors at scale 1
    on every width, as LyCORIS's 10000), the Attention layers at the adapter's 16 (no block)."""
    outcome = convert(tmp_path, RECIPE)
    assert outcome.exit_code == 0 and outcome.written, errors(outcome)
    adapter = plan_of(outcome, tmp_path).adapter
    assert (adapter.kind, adapter.rank, adapter.alpha, adapter.factor) == ("lokr", 10000, 1.0, 16)
    assert [(b.pattern, b.rank, b.alpha, b.factor) for b in adapter.blocks] == [
        (FEED_FORWARD, 1024, 1024.0, 8)
    ]


def test_flux_recipe_blocks_name_the_joint_attention_and_text_feed_forward(tmp_path):
    """On Flux the classes hold the joint attention's text projections and the text stream's feed-forward
    too (the single blocks' attention is an Attention; their MLP Linears sit outside both classes)."""
    flux = {k: v for k, v in CONFIG.items() if k != "pretrained_model_name_or_path"}
    outcome = convert(tmp_path, RECIPE, config={**flux, "model_family": "flux", "model_flavour": "dev"})
    assert outcome.exit_code == 0 and outcome.written, errors(outcome)
    adapter = plan_of(outcome, tmp_path).adapter
    (block,) = adapter.blocks
    assert (block.rank, block.alpha, block.factor, adapter.factor) == (1024, 1024.0, 8, 16)
    ff = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
    paths = [f"transformer_blocks.0.{n}" for n in (*ff, "attn.to_q", "attn.add_k_proj", "attn.to_add_out")]
    assert [p for p in paths if re.search(block.pattern, p)] == [f"transformer_blocks.0.{n}" for n in ff]


@pytest.mark.parametrize(
    ("lycoris", "blocks"),
    [
        # no top-level factor (create_lycoris's -1): both classes at their own; an entry's 0 splits as 1
        (
            {**RECIPE, "factor": -1, "linear_dim": 64, "linear_alpha": 32},
            [(ATTENTION, 64, 32.0, 16), (FEED_FORWARD, 64, 32.0, 8)],
        ),
        (
            {
                **RECIPE,
                "linear_dim": 8,
                "apply_preset": {**RECIPE["apply_preset"], "module_algo_map": {"FeedForward": {"factor": 0}}},
            },
            [(FEED_FORWARD, 8, 1.0, 1)],
        ),
    ],
)
def test_class_factors_at_other_dims(tmp_path, lycoris, blocks):
    outcome = convert(tmp_path, lycoris)
    assert outcome.exit_code == 0 and outcome.written, errors(outcome)
    adapter = plan_of(outcome, tmp_path).adapter
    assert [(b.pattern, b.rank, b.alpha, b.factor) for b in adapter.blocks] == blocks


def test_a_factor_that_leaves_a_layer_low_rank_at_1024_is_refused(tmp_path):
    """factor 1 leaves a 12288-wide layer's second part 12288 wide (the widths of every family SimpleTuner's
    presets reach): full at 10000 (LyCORIS), low-rank at a block's 1024, so no block expresses it (DBS403);
    full_matrix makes every layer full at any dim."""
    preset = {**RECIPE["apply_preset"], "module_algo_map": {"FeedForward": {"factor": 1}}}
    outcome = convert(tmp_path, {**RECIPE, "apply_preset": preset}, allow=True)
    assert "full only from dim 6144" in messages(outcome, "DBS403")
    outcome = convert(tmp_path, {**RECIPE, "apply_preset": preset, "full_matrix": True})
    assert outcome.exit_code == 0 and outcome.written, errors(outcome)
    assert [b.factor for b in plan_of(outcome, tmp_path).adapter.blocks] == [1]


def test_other_entry_settings_stay_refused(tmp_path):
    preset = {**RECIPE["apply_preset"], "module_algo_map": {"Attention": {"factor": 16, "algo": "loha"}}}
    outcome = convert(tmp_path, {**RECIPE, "apply_preset": preset}, allow=True)
    assert "module_algo_map gives modules their own settings" in messages(outcome, "DBS403")
