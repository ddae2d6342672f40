"""Strict structuring of TOML data into `Spec`, the did-you-mean help, and `--set` parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli

from dbspec.spec.check import load_and_structure
from dbspec.spec.load import apply_overrides, parse_override_key, parse_override_value
from dbspec.spec.model import LoraAdapter, NoAdapter
from dbspec.spec.structure import structure_spec
from dbspec.spec.suggest import suggest

BASE = """
spec_version = 2
[model]
base = "runwayml/stable-diffusion-v1-5"
[[datasets]]
name = "dog"
path = "data/dog"
prompt = "a photo of ohwx dog"
"""


def structure(extra: str = ""):
    return structure_spec(tomli.loads(BASE + extra))


def problems(extra: str) -> dict:
    """Key path -> problem kind, for a spec made of BASE plus `extra`."""
    spec, found = structure(extra)
    assert spec is None
    return {located.path: located.problem.kind for located in found}


def checked_in(tmp_path: Path, extra: str, overrides: list[str] | None = None):
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(BASE + extra, encoding="utf-8")
    return load_and_structure(spec_file, "spec.toml", overrides or [])


def test_the_base_spec_structures_with_defaults():
    spec, found = structure()
    assert found == []
    assert spec.datasets[0].repeats == 1
    assert isinstance(spec.adapter, NoAdapter)


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ('[schedule]\nbatch_size = "5"', ("schedule", "batch_size")),  # a quoted number
        ("[schedule]\nbatch_size = true", ("schedule", "batch_size")),  # bool is not an int
        ("[schedule]\nbatch_size = 2.7", ("schedule", "batch_size")),  # no silent truncation
        ("[schedule]\nbatch_size = 2.0", ("schedule", "batch_size")),  # a float, even a whole one
        ('[optimizer]\nlr = "2e-6"', ("optimizer", "lr")),
        ("[optimizer]\nlr = true", ("optimizer", "lr")),
        ('[train]\ntext_encoder = "true"', ("train", "text_encoder")),
        ("[train]\ntext_encoder = 1", ("train", "text_encoder")),
        ("[model.x]\n", ("model", "x")),
        ('[validation]\nprompts = "a photo"', ("validation", "prompts")),
        ("[validation]\nprompts = [1]", ("validation", "prompts", 0)),
        ("[output]\nname = 3", ("output", "name")),
    ],
)
def test_wrong_types_are_errors_not_coerced(extra, path):
    found = problems(extra)
    assert path in found
    assert found[path] in ("type", "unknown")


def test_an_integer_is_a_valid_float():
    spec, found = structure("[optimizer]\nlr = 1\n[loss]\nprior_weight = 0")
    assert found == []
    assert spec.optimizer.lr == 1.0 and type(spec.optimizer.lr) is float
    assert type(spec.loss.prior_weight) is float


def test_every_problem_is_gathered_not_just_the_first():
    found = problems(
        '[schedule]\nbatch_size = "2"\nsteps = 2.5\n[optimizer]\nlearning_rate = 1e-6\nkind = "adam"'
    )
    assert found == {
        ("schedule", "batch_size"): "type",
        ("schedule", "steps"): "type",
        ("optimizer", "learning_rate"): "unknown",
        ("optimizer", "kind"): "enum",
    }


def test_missing_required_keys_are_named():
    spec, found = structure_spec({"spec_version": 2, "datasets": [{"name": "a"}]})
    kinds = {located.path: located.problem.kind for located in found}
    assert kinds == {("model",): "missing", ("datasets", 0, "path"): "missing"}


def test_enum_problems_carry_the_allowed_values():
    spec, found = structure('[schedule]\nlr_schedule = "cosine_restarts"')
    (located,) = found
    assert located.problem.kind == "enum"
    assert "cosine_with_restarts" in located.problem.allowed


def test_a_choice_of_numbers_takes_integers_only():
    def with_tokens(value: str):
        return structure_spec(tomli.loads(BASE.replace("[model]\n", f"[model]\nmax_tokens = {value}\n")))

    spec, found = with_tokens("225")
    assert found == [] and spec.model.max_tokens == 225
    _, found = with_tokens("100")
    assert [(f.problem.kind, f.problem.allowed) for f in found] == [("enum", (75, 150, 225))]
    _, found = with_tokens('"150"')
    assert [(f.problem.kind, f.problem.expected) for f in found] == [("type", "integer")]


# -- the adapter union, tagged by `kind` ----------------------------------------------------------


def test_adapter_defaults_to_none():
    spec, _ = structure("[adapter]\n")
    assert isinstance(spec.adapter, NoAdapter)


def test_lora_adapter_with_derived_alpha():
    spec, found = structure('[adapter]\nkind = "lora"\nrank = 8')
    assert found == []
    assert isinstance(spec.adapter, LoraAdapter)
    assert spec.adapter.alpha == 8.0


def test_lora_options_under_a_none_adapter_name_their_variant():
    spec, found = structure("[adapter]\nrank = 8\nalpha = 4.0")
    assert spec is None
    assert {(loc.path, loc.problem.kind, loc.problem.variant) for loc in found} == {
        (("adapter", "rank"), "variant", "lora"),
        (("adapter", "alpha"), "variant", "lora"),
    }


def test_unknown_adapter_kind_is_an_enum_problem():
    assert problems('[adapter]\nkind = "lycoris"\nrank = 8') == {("adapter", "kind"): "enum"}


@pytest.mark.parametrize("kind", ["[]", "1", "{ a = 1 }", "true"])
def test_adapter_kind_of_another_type_is_a_type_problem(kind):
    assert problems(f"[adapter]\nkind = {kind}\nrank = 8") == {("adapter", "kind"): "type"}


def test_keys_unknown_to_every_variant_are_unknown():
    assert problems('[adapter]\nkind = "lora"\nrnak = 8') == {("adapter", "rnak"): "unknown"}


def test_adapter_problems_inside_the_variant_keep_their_path():
    assert problems('[adapter]\nkind = "lora"\nrank = "8"') == {("adapter", "rank"): "type"}


def test_adapter_given_as_a_string_is_a_type_problem():
    spec, found = structure_spec({**tomli.loads(BASE), "adapter": "lora"})
    assert [(loc.path, loc.problem.kind) for loc in found] == [(("adapter",), "type")]


# -- did you mean -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "table", "expected"),
    [
        ("learning_rat", "optimizer", "did you mean `lr`?"),  # close to another tool's name for lr
        ("learning_rate", "optimizer", "did you mean `lr`?"),
        ("batchsize", "schedule", "did you mean `batch_size`?"),
        ("lr", "schedule", "`lr` belongs in [optimizer]"),
        ("repeats", "model", "`repeats` belongs in [[datasets]]"),
        ("max_train_steps", "optimizer", "in dbspec it is `steps` in [schedule]"),
        ("prior_loss_weight", "loss", "did you mean `prior_weight`?"),
        ("gradient_checkpoint", "optimizer", "did you mean `gradient_checkpointing` in [precision]?"),
    ],
)
def test_suggestions_for_unknown_keys(key, table, expected):
    from dbspec.spec.check import _TABLE_FIELDS

    assert expected in suggest(key, table, _TABLE_FIELDS[table])


def test_unknown_keys_get_did_you_mean_in_diagnostics(tmp_path):
    extra = "[optimizer]\nlearning_rat = 1e-6\n[schedule]\nlr = 1e-6\nsteps = 10"
    checked = checked_in(tmp_path, extra)
    by_path = {d.path: d for d in checked.diagnostics}
    assert by_path["optimizer.learning_rat"].code == "DBS102"
    assert by_path["optimizer.learning_rat"].help == "did you mean `lr`?"
    assert by_path["schedule.lr"].help == "`lr` belongs in [optimizer]"
    assert by_path["schedule.lr"].span.line == (BASE + extra).split("\n").index("lr = 1e-6") + 1


def test_nothing_useful_to_suggest_lists_the_allowed_keys():
    assert suggest("zzz", "logging", {"every", "tensorboard"}) == "allowed keys: every, tensorboard"


# -- --set parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("optimizer.lr", ("optimizer", "lr")),
        ("datasets[0].repeats", ("datasets", 0, "repeats")),
        ("datasets.0.repeats", ("datasets", 0, "repeats")),
        ("datasets[1].name", ("datasets", 1, "name")),
        ("spec_version", ("spec_version",)),
        ("optimizer..lr", None),
        ("0.repeats", None),
        ("", None),
        ("optimizer.learning rate", None),
    ],
)
def test_override_keys(key, path):
    assert parse_override_key(key) == path


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2e-6", 2e-6),
        ("5", 5),
        ("true", True),
        ('"2"', "2"),
        ("some/hub-id", "some/hub-id"),  # a bare hub id or path is a string
        ("./data/dog", "./data/dog"),
        ("builtin:tiny-sd1", "builtin:tiny-sd1"),
        ('["a", "b"]', ["a", "b"]),
        ('{ kind = "lora" }', {"kind": "lora"}),
    ],
)
def test_override_values(text, value):
    assert parse_override_value(text) == (value, True)
    assert type(parse_override_value(text)[0]) is type(value)


@pytest.mark.parametrize("text", ["", "a b", "[a photo]", "2abc", '"unclosed'])
def test_override_values_that_are_not_toml(text):
    assert parse_override_value(text)[1] is False


def test_overrides_write_into_the_data():
    data = tomli.loads(BASE)
    keys, values, problems_found = apply_overrides(
        data,
        ["datasets[0].repeats=5", "datasets.0.flip=true", "model.base=some/hub-id", "schedule.steps=800"],
    )
    assert problems_found == []
    assert data["datasets"][0]["repeats"] == 5 and data["datasets"][0]["flip"] is True
    assert data["model"]["base"] == "some/hub-id"
    assert data["schedule"] == {"steps": 800}  # a table the file did not have
    assert values[("model", "base")].col == len("model.base=") + 1
    assert keys[("model", "base")].col == 1 and keys[("model", "base")].end_col == len("model.base") + 1
    assert all(
        span.origin == "--set" and span.file == "<--set>" for span in [*keys.values(), *values.values()]
    )


@pytest.mark.parametrize(
    "item", ["optimizer.lr", "datasets[4].repeats=1", "model.base.x=1", "=1", "schedule.steps=a b"]
)
def test_bad_overrides_are_reported_not_applied(item):
    data = tomli.loads(BASE)
    before = tomli.loads(BASE)
    _, _, found = apply_overrides(data, [item])
    assert [d.code for d in found] == ["DBS004"]
    assert found[0].span.origin == "--set"
    assert data == before


def test_override_values_are_checked_strictly(tmp_path):
    checked = checked_in(
        tmp_path, "[schedule]\nsteps = 10", ['schedule.batch_size="2"', "datasets[0].repeats=5"]
    )
    (diagnostic,) = checked.diagnostics
    assert diagnostic.code == "DBS101" and diagnostic.path == "schedule.batch_size"
    assert diagnostic.span.origin == "--set"
    assert checked.raw.data["datasets"][0]["repeats"] == 5
