"""The torch-free rare-token finder (dbspec/compiler/tokens.py), identifier detection and rules DBS295/DBS296.

The tokenizers here are real CLIP BPE files (vocab.json + merges.txt) written into a diffusers-shaped folder:
the built-in tiny vocabulary plus extra merges that make known rare words. tests/runtime/test_tokens.py checks
the same splits against transformers' CLIPTokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli
from typer.testing import CliRunner

from dbspec.builtin import END_OF_WORD, TOKENIZER_MERGES, bytes_to_unicode
from dbspec.cli import app
from dbspec.compiler import rules
from dbspec.compiler.identifier import instance_identifiers, prompt_identifier
from dbspec.compiler.tokens import TokenizerError, candidates, model_tokenizers, read_tokenizer
from dbspec.spec.structure import structure_spec

# Each pair of merges makes one word: kev (ranks 30, 31), vol (32, 33), zyx (34, 35); "dogz" uses dog's merge.
EXTRA = (("k", "e"), ("ke", "v</w>"), ("v", "o"), ("vo", "l</w>"), ("z", "y"), ("zy", "x</w>"))


def write_tokenizer(folder: Path, merges) -> Path:
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + END_OF_WORD for s in symbols), *(a + b for a, b in merges), "<|startoftext|>"]
    tokens.append("<|endoftext|>")
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    lines = "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")
    return folder


def model_folder(root: Path, *merge_lists) -> Path:
    """A diffusers-shaped folder holding only its tokenizers (model_index.json and tokenizer[_2]/)."""
    root.mkdir(parents=True)
    (root / "model_index.json").write_text("{}")
    for i, merges in enumerate(merge_lists):
        write_tokenizer(root / ("tokenizer" if i == 0 else f"tokenizer_{i + 1}"), merges)
    return root


def test_bpe_merges_by_rank_and_counts_prompt_tokens():
    [tok] = model_tokenizers("builtin:tiny-sd1")
    assert tok.word_tokens("photo") == ["photo</w>"]
    assert tok.word_tokens("Dog") == ["dog</w>"]
    assert tok.word_tokens("sks") == ["s", "k", "s</w>"]
    assert tok.word_tokens("ther") == ["th", "er</w>"]  # th (rank 0) first, then er</w> (rank 22)
    assert tok.text_tokens("a photo of sks dog") == [
        "a</w>",
        "photo</w>",
        "of</w>",
        "s",
        "k",
        "s</w>",
        "dog</w>",
    ]


def test_sdxl_has_two_tokenizers():
    assert [t.name for t in model_tokenizers("builtin:tiny-sdxl")] == ["tokenizer", "tokenizer_2"]


def test_candidates_are_rarest_first_and_skip_common_words(tmp_path):
    folder = model_folder(tmp_path / "m", TOKENIZER_MERGES + EXTRA)
    found = candidates(model_tokenizers(str(folder)))
    words = [c.word for c in found]
    assert words[:3] == ["zyx", "vol", "kev"]  # later merges first
    assert [c.rank for c in found[:3]] == [35, 33, 31]
    assert "dog" not in words and "photo" not in words and "the" not in words  # common words
    tok = read_tokenizer(folder / "tokenizer")
    for c in found:
        assert tok.word_tokens(c.word) == [c.word + END_OF_WORD]
        assert c.ids == (tok.vocab[c.word + END_OF_WORD],)


def test_a_candidate_must_be_one_token_in_every_tokenizer(tmp_path):
    without_vol = tuple(m for m in TOKENIZER_MERGES + EXTRA if "v" not in m[0] + m[1])
    folder = model_folder(tmp_path / "m", TOKENIZER_MERGES + EXTRA, without_vol)
    words = [c.word for c in candidates(model_tokenizers(str(folder)))]
    assert "vol" not in words and "kev" not in words and words[0] == "zyx"


def test_a_vocab_entry_bpe_never_reaches_is_not_a_candidate(tmp_path):
    # "zyx" is in the vocabulary, but "yx</w>" merges first, so BPE splits the word as z + yx.
    merges = (*TOKENIZER_MERGES, ("y", "x</w>"), ("z", "y"), ("zy", "x</w>"))
    folder = model_folder(tmp_path / "m", merges)
    tok = read_tokenizer(folder / "tokenizer")
    assert tok.word_tokens("zyx") == ["z", "yx</w>"]
    assert "zyx" not in [c.word for c in candidates([tok])]


def test_tokenizer_json_is_read_when_there_are_no_bpe_files(tmp_path):
    folder = write_tokenizer(tmp_path / "tokenizer", TOKENIZER_MERGES + EXTRA)
    vocab = json.loads((folder / "vocab.json").read_text())
    joined = {"model": {"vocab": vocab, "merges": [f"{a} {b}" for a, b in TOKENIZER_MERGES + EXTRA]}}
    (folder / "vocab.json").unlink()
    (folder / "tokenizer.json").write_text(json.dumps(joined))
    assert read_tokenizer(folder).word_tokens("zyx") == ["zyx</w>"]


def test_unreadable_models_say_why(tmp_path):
    with pytest.raises(TokenizerError, match="unknown built-in"):
        model_tokenizers("builtin:tiny-nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text("{}")
    with pytest.raises(TokenizerError, match="no tokenizer folder"):
        model_tokenizers(str(tmp_path / "m"))
    with pytest.raises(TokenizerError, match="not in the local Hugging Face cache"):
        model_tokenizers("someone/not-cached-model")


def test_tokens_command_lists_candidates(tmp_path):
    folder = model_folder(tmp_path / "m", TOKENIZER_MERGES + EXTRA)
    result = CliRunner().invoke(app, ["tokens", str(folder), "--json", "--count", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [row["word"] for row in data["candidates"]] == ["zyx", "vol"]
    text = CliRunner().invoke(app, ["tokens", "builtin:tiny-sdxl"])
    assert text.exit_code == 0 and "tokenizer and tokenizer_2" in text.output and "ing" in text.output
    missing = CliRunner().invoke(app, ["tokens", str(tmp_path / "nothing")])
    assert missing.exit_code == 1


# --- the identifier -----------------------------------------------------------------------------------------
def test_the_identifier_is_the_one_word_class_prompts_lack():
    assert prompt_identifier("a photo of ohwx dog", ["a photo of a dog"]) == "ohwx"
    assert prompt_identifier("a photo of ohwx red dog", ["a photo of a dog"]) == ""  # two words: ambiguous
    assert prompt_identifier("a photo of ohwx dog", []) == ""  # nothing to compare with
    assert prompt_identifier("a photo of ohwx dog", [], explicit="ohwx") == "ohwx"


# --- DBS295 / DBS296 ----------------------------------------------------------------------------------------
def spec_with(base: str, word: str):
    body = (
        f'spec_version = 2\n[model]\nbase = "{base}"\n'
        f'[[datasets]]\nname = "dog"\npath = "data/dog"\nprompt = "a photo of {word} dog"\n'
        '[[datasets]]\nname = "dogs"\nrole = "class"\npath = "data/dogs"\nprompt = "a photo of a dog"\n'
    )
    spec, problems = structure_spec(tomli.loads(body))
    assert problems == []
    return spec


def codes_for(tmp_path, base: str, word: str) -> list[str]:
    spec = spec_with(base, word)
    assert instance_identifiers(spec) == [(0, word)]
    return [h.code for h in rules.identifier_tokens(spec, tmp_path / "spec.toml")]


def test_sks_and_many_token_words_warn_and_a_rare_single_token_does_not(tmp_path):
    folder = model_folder(tmp_path / "m", TOKENIZER_MERGES + EXTRA, TOKENIZER_MERGES + EXTRA)
    assert codes_for(tmp_path, str(folder), "sks") == ["DBS295", "DBS296"]
    assert codes_for(tmp_path, str(folder), "ohwx") == ["DBS295"]  # o + h + w + x
    assert codes_for(tmp_path, str(folder), "zyx") == []
    assert codes_for(tmp_path, str(folder), "kevin") == ["DBS295"]  # kev + i + n
    # Built-in toy vocabularies spell every real word in pieces: only the prior is checked there.
    assert codes_for(tmp_path, "builtin:tiny-sdxl", "sks") == ["DBS296"]
    assert codes_for(tmp_path, "builtin:tiny-sdxl", "ohwx") == []


def test_a_word_of_one_tokenizer_only_warns_for_the_other(tmp_path):
    without_vol = tuple(m for m in TOKENIZER_MERGES + EXTRA if "v" not in m[0] + m[1])
    folder = model_folder(tmp_path / "m", TOKENIZER_MERGES + EXTRA, without_vol)
    spec = spec_with(str(folder), "vol")
    [hit] = rules.identifier_tokens(spec, tmp_path / "spec.toml")
    assert hit.code == "DBS295" and hit.path == ("datasets", 0, "prompt")
    assert "tokenizer: vol; tokenizer_2: v + o + l" in hit.message


def test_no_tokenizer_to_read_is_silent(tmp_path):
    assert codes_for(tmp_path, "someone/not-cached-model", "sks") == []


def test_the_evaluation_identifier_is_the_one_the_rule_checks(tmp_path):
    """One source of truth: `[evaluation] identifier` names the word DBS295/DBS296 check, also when the
    prompts alone would not settle it (no class prompt here)."""
    body = (
        'spec_version = 2\n[model]\nbase = "builtin:tiny-sdxl"\n'
        '[[datasets]]\nname = "dog"\npath = "data/dog"\nprompt = "a photo of sks red dog"\n'
        '[evaluation]\nidentifier = "sks"\n'
    )
    spec, problems = structure_spec(tomli.loads(body))
    assert problems == []
    assert [h.code for h in rules.identifier_tokens(spec, tmp_path / "spec.toml")] == ["DBS296"]
    unset, _ = structure_spec(tomli.loads(body.replace('identifier = "sks"', "")))
    assert (
        list(rules.identifier_tokens(unset, tmp_path / "spec.toml")) == []
    )  # not derivable: nothing checked
    other, _ = structure_spec(tomli.loads(body.replace('identifier = "sks"', 'identifier = "zkw"')))
    assert list(rules.identifier_tokens(other, tmp_path / "spec.toml")) == []  # not in the prompt


def test_a_trained_pivotal_token_as_identifier_does_not_warn(tmp_path):
    """A new token trained by pivotal tuning has no prior and is one token by construction: no DBS295/296."""
    folder = model_folder(tmp_path / "m", TOKENIZER_MERGES + EXTRA, TOKENIZER_MERGES + EXTRA)
    assert codes_for(tmp_path, str(folder), "sks") == ["DBS295", "DBS296"]
    for token in ("sks", "<sks>"):
        body = (
            f'spec_version = 2\n[model]\nbase = "{folder}"\n'
            f'[[datasets]]\nname = "dog"\npath = "data/dog"\nprompt = "a photo of {token} dog"\n'
            '[[datasets]]\nname = "dogs"\nrole = "class"\npath = "data/dogs"\nprompt = "a photo of a dog"\n'
            f'[pivotal]\ntokens = ["{token}"]\n'
        )
        spec, problems = structure_spec(tomli.loads(body))
        assert problems == []
        assert list(rules.identifier_tokens(spec, tmp_path / "spec.toml")) == [], token
