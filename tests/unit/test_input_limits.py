"""Input limits (issue 10): inputs that used to escape as "internal error" now get positioned diagnostics.

Deep nesting and long dotted keys (DBS005), paths the OS refuses (DBS309/DBS310), run lengths whose plan
must stay small (StepRange, DBS105), and safetensors headers nested past what json.loads can recurse.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from dbspec.compiler.hub import is_local
from dbspec.compiler.safetensors_header import ModelFileError, read_safetensors
from dbspec.compiler.target import parse_target
from dbspec.diagnostics import Diagnostic
from dbspec.frontend import check_spec, plan_spec
from dbspec.plan.io import plan_to_json
from dbspec.plan.model import StepRange
from dbspec.spec import limits
from dbspec.spec.limits import MAX_DEPTH

ROOT = Path(__file__).resolve().parents[2]
CPU = parse_target("cpu")
SPEC = f"""spec_version = 2

[model]
base = "builtin:tiny-sd1"

[[datasets]]
name = "toy"
path = {json.dumps(str(ROOT / "specs" / "data" / "toy"))}
prompt = "a photo of ohwx toy"
resolution = 64

[buckets]
step = 16

[schedule]
steps = 60

[validation]
every = 30
prompts = ["a photo of ohwx toy on a beach"]

[checkpoints]
every = 30

[cache]
dir = "cache"

[output]
dir = "out"
"""

HANG = 60  # seconds: a guard against hangs (these took minutes), not a performance target


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def check(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> list[Diagnostic]:
    path = tmp_path / "spec.toml"
    path.write_text(text, encoding="utf-8")
    return list(check_spec(path, "spec.toml", list(overrides)).diagnostics)


def plan(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()):
    path = tmp_path / "spec.toml"
    path.write_text(text, encoding="utf-8")
    return plan_spec(path, CPU, "spec.toml", list(overrides))


def only(diagnostics: list[Diagnostic], code: str) -> Diagnostic:
    assert [d.code for d in diagnostics] == [code], [(d.code, d.message) for d in diagnostics]
    return diagnostics[0]


def line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.split("\n"), 1) if line.startswith(start))


# --- nesting depth and key length (DBS005) ------------------------------------------------------------------


@pytest.mark.parametrize("depth", [500, 350, 120, MAX_DEPTH + 1])
def test_deep_values_get_one_positioned_diagnostic(tmp_path, depth):
    text = SPEC.replace("every = 30\nprompts", f"every = {nested(depth)}\nprompts")
    d = only(check(tmp_path, text), "DBS005")
    assert d.path == "validation.every" and "more than 32 levels" in d.message
    assert (d.span.line, d.span.col) == (line_of(text, "every = [["), len("every = ") + MAX_DEPTH + 1)


def test_at_the_depth_limit_later_errors_keep_their_positions(tmp_path):
    text = SPEC.replace("every = 30\nprompts", f"every = {nested(MAX_DEPTH - 1)}\nprompts").replace(
        "steps = 60", 'steps = "60"'
    )
    found = {d.path: d for d in check(tmp_path, text)}
    assert set(found) == {"validation.every", "schedule.steps"}
    assert found["validation.every"].code == "DBS101" and "[[[" in found["validation.every"].message
    assert found["validation.every"].span.line == line_of(text, "every = [[")
    assert found["schedule.steps"].span.line == line_of(text, "steps = ")


def test_a_dotted_key_of_1001_parts(tmp_path):
    text = SPEC + ".".join(["a"] * 1001) + " = 1\n"
    d = only(check(tmp_path, text), "DBS005")
    assert "has 1001 parts" in d.message and d.path.startswith("output.a.a")
    assert (d.span.line, d.span.col) == (line_of(text, "a.a.a"), 1)


def test_a_long_table_header(tmp_path):
    text = SPEC + "[" + ".".join(["t"] * 40) + "]\n"
    d = only(check(tmp_path, text), "DBS005")
    assert "has 40 parts" in d.message and (d.span.line, d.span.col) == (line_of(text, "[t.t"), 2)


def test_header_and_key_parts_add_up(tmp_path):
    header, key = ".".join(["h"] * 20), ".".join(["k"] * 20)
    text = SPEC + f"[{header}]\n{key} = 1\n"
    d = only(check(tmp_path, text), "DBS005")
    assert "more than 32 levels deep" in d.message and d.path.startswith("h.h.h")
    assert d.span.line == line_of(text, "k.k")


def test_brackets_in_strings_and_comments_do_not_count(tmp_path):
    deep = nested(100)
    text = SPEC.replace(
        'prompts = ["a photo', f'# {deep}\nprompts = ["{deep}", \'{deep}\', """\n{deep}""", "a photo'
    )
    text += (
        'inline = { "k[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[" = 1,\n'
        '  "l[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[" = 2 }\n'
    )
    assert [d.code for d in check(tmp_path, text)] == ["DBS102"]  # `inline` is unknown; nothing is too deep


def test_deep_and_long_overrides(tmp_path):
    d = only(check(tmp_path, SPEC, (f"validation.every={nested(500)}",)), "DBS005")
    assert d.span.origin == "--set" and d.path == "validation.every"
    d = only(check(tmp_path, SPEC, ("cache." + ".".join(["x"] * 40) + "=1",)), "DBS005")
    assert d.span.origin == "--set" and d.path.startswith("cache.x.x")


def test_tomli_recursion_is_caught_even_if_the_lexer_misses_it(tmp_path, monkeypatch):
    monkeypatch.setattr("dbspec.spec.load.text_problem", lambda text, label: None)
    d = only(check(tmp_path, SPEC + f"v = {nested(600)}\n"), "DBS005")
    assert d.span.line == 1


@pytest.mark.parametrize("digits", [101, 5000])
def test_numbers_too_long_to_read(tmp_path, digits):
    text = SPEC.replace("steps = 60", "steps = 1" + "0" * (digits - 1))
    d = only(check(tmp_path, text), "DBS006")
    assert d.path == "schedule.steps" and f"{digits} digits" in d.message
    assert (d.span.line, d.span.col) == (line_of(text, "steps = 1"), len("steps = ") + 1)
    d = only(check(tmp_path, SPEC, (f"schedule.seed={'9' * digits}",)), "DBS006")
    assert d.span.origin == "--set" and d.path == "schedule.seed"


def test_long_digit_strings_and_keys_are_no_numbers(tmp_path):
    digits = "1" * 5000
    text = SPEC.replace('prompt = "a photo', f'prompt = "{digits} a photo') + f'[cache.x]\n{digits} = "a"\n'
    assert [d.code for d in check(tmp_path, text)] == ["DBS102"]  # cache.x is unknown; nothing is too long


def test_an_int_too_large_for_a_float_option(tmp_path):
    text = SPEC.replace("[schedule]", "[loss]\nmin_snr_gamma = " + "9" * 400 + "\n\n[schedule]")
    d = only(check(tmp_path, text), "DBS006")  # 400 digits: refused on the text
    text = SPEC.replace("[schedule]", "[loss]\nmin_snr_gamma = 0x" + "f" * 300 + "\n\n[schedule]")
    d = only(check(tmp_path, text), "DBS101")  # hex: no digit run, but still past float's range
    assert d.path == "loss.min_snr_gamma" and "at most 1.8e+308" in d.message


def test_a_header_with_a_long_tail_is_diagnosed_quickly(tmp_path):
    start = time.perf_counter()
    d = only(check(tmp_path, SPEC + '[optimiz"' + " " * 100_000 + "\n"), "DBS001")
    assert time.perf_counter() - start < HANG and "not closed" in d.message


def test_the_lexer_is_linear(tmp_path):
    start = time.perf_counter()
    assert limits.text_problem("a = [" + "1, " * 300_000 + "]\n" + "b = 'x'\n" * 50_000, "big.toml") is None
    assert time.perf_counter() - start < HANG


# --- paths the OS refuses (DBS310, DBS309) ------------------------------------------------------------------


def test_a_base_too_long_for_a_file_name(tmp_path):
    planned = plan(tmp_path, SPEC.replace('"builtin:tiny-sd1"', '"' + "x" * 300 + '"'))
    d = only(list(planned.diagnostics), "DBS310")
    assert d.path == "model.base" and "too long" in d.message and d.span.line == line_of(SPEC, "base =")


def test_any_os_error_on_a_spec_path_names_the_key(tmp_path):
    planned = plan(
        tmp_path,
        SPEC.replace('base = "builtin:tiny-sd1"', 'base = "builtin:tiny-sd1"\nvae = "' + "v" * 300 + '"'),
    )
    d = only(list(planned.diagnostics), "DBS309")
    # the message shortens the path to its first characters: how many v's remain depends on tmp_path's length
    assert d.path == "model.vae" and str(tmp_path)[:30] in d.message and "too long" in d.message
    assert d.span.line == line_of(SPEC, "base =") + 1


def test_download_treats_an_unprobeable_base_as_a_path(tmp_path):
    assert is_local("x" * 300, tmp_path) and not is_local("org/model", tmp_path)


def test_an_unreadable_model_folder(tmp_path, monkeypatch):
    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    (tmp_path / "model").mkdir()
    monkeypatch.setattr(Path, "is_dir", refuse)
    planned = plan(tmp_path, SPEC.replace('"builtin:tiny-sd1"', '"model"'))
    assert any(
        d.code == "DBS310" and d.path == "model.base" and "Permission denied" in d.message
        for d in planned.diagnostics
    )


# --- run length: the plan's size does not grow with it ------------------------------------------------------


def test_ten_million_steps_checkpointed_every_step_plan_fast_and_small(tmp_path):
    text = SPEC.replace("steps = 60", "steps = 10000000").replace("every = 30", "every = 1")
    start = time.perf_counter()
    planned = plan(tmp_path, text)
    assert planned.plan is not None, planned.diagnostics
    assert time.perf_counter() - start < HANG
    s = planned.plan.schedule
    assert s.checkpoint_steps == StepRange(every=1, end=10_000_000) == planned.plan.checkpoints.steps
    assert len(s.lr_points) <= 18 and len(plan_to_json(planned.plan)) < 100_000


def test_steps_beyond_the_limit_are_a_range_error(tmp_path):
    text = SPEC.replace("steps = 60", "steps = 100000000")
    d = only(check(tmp_path, text), "DBS105")
    assert d.path == "schedule.steps" and "<= 10000000" in d.message and "100000000" in d.message


def test_bucket_sides_are_bounded(tmp_path):
    d = only(check(tmp_path, SPEC.replace("step = 16", "step = 16\nmax_size = " + "9" * 30)), "DBS105")
    assert d.path == "buckets.max_size" and "<= 16384" in d.message
    start = time.perf_counter()
    assert plan(tmp_path, SPEC.replace("step = 16", "step = 16\nmax_size = 16384")).plan is not None
    assert time.perf_counter() - start < HANG


def test_step_range():
    r = StepRange(every=30, end=100)
    assert tuple(r) == (30, 60, 90, 100) and len(r) == 4 and r.first(2) == (30, 60)
    assert [s for s in range(-1, 130) if s in r] == [30, 60, 90, 100] and 30.0 not in r
    assert tuple(StepRange(every=0, end=7)) == (7,) and not StepRange(every=0, end=0)
    big = StepRange(every=1, end=10**12)
    assert len(big) == 10**12 and 123456 in big and 10**12 + 1 not in big
    assert big.spread(5) == (1, 250_000_000_000, 500_000_000_000, 750_000_000_000, 10**12)
    assert StepRange(every=40, end=100).spread(16) == (40, 80, 100)


# --- safetensors headers ---------------------------------------------------------------------------------


def safetensors_file(path: Path, header: bytes) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_a_header_of_100000_nested_arrays(tmp_path):
    path = safetensors_file(tmp_path / "deep.safetensors", b'{"a":' + nested(100_000).encode() + b"}")
    with pytest.raises(ModelFileError, match="nests more than 32 levels"):
        read_safetensors(path)
    planned = plan(tmp_path, SPEC.replace('"builtin:tiny-sd1"', '"deep.safetensors"'))
    d = only([d for d in planned.diagnostics if d.severity == "error"], "DBS310")
    assert d.path == "model.base" and "not safetensors" in d.message


def test_unbalanced_or_stringly_deep_headers(tmp_path):
    unbalanced = safetensors_file(tmp_path / "u.safetensors", b'{"a":' + b"[" * 100_000 + b"}")
    with pytest.raises(ModelFileError, match="nests"):
        read_safetensors(unbalanced)
    metadata = json.dumps({"__metadata__": {"ss_tags": "[" * 5000 + "{" * 100}}).encode()
    assert (
        read_safetensors(safetensors_file(tmp_path / "m.safetensors", metadata)).metadata["ss_tags"][0] == "["
    )
