"""`dbspec tokens` against the real tokenizers: every listed word is one token in each of the model's
transformers CLIPTokenizers, the torch-free BPE splits words exactly as they do, and --probe's similarity is
the cosine computed here by hand from the text encoders' embeddings."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPTokenizer
from typer.testing import CliRunner

from dbspec.builtin import TOKENIZER_MERGES
from dbspec.cli import app
from dbspec.compiler.tokens import candidates, common_token_ids, model_tokenizers
from dbspec.runtime.tiny import build_pipeline, materialize
from tests.unit.test_tokens import EXTRA, model_folder

WORDS = ["sks", "ohwx", "photo", "dog", "zyx", "vol", "kev", "kevin", "ther", "catdog", "ing", "rings", "x"]


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return materialize("builtin:tiny-sdxl", tmp_path_factory.mktemp("m") / "tiny-sdxl")


def real(folder, name):
    return CLIPTokenizer.from_pretrained(folder / name)


def test_listed_tokens_are_single_tokens_in_each_real_tokenizer(sdxl, tmp_path):
    for folder in (sdxl, model_folder(tmp_path / "x", TOKENIZER_MERGES + EXTRA, TOKENIZER_MERGES + EXTRA)):
        tokenizers = model_tokenizers(str(folder))
        found = candidates(tokenizers, min_length=2)
        assert found
        for e, tok in enumerate(tokenizers):
            reference = real(folder, tok.name)
            for c in found:
                ids = reference(c.word).input_ids
                assert ids == [reference.bos_token_id, c.ids[e], reference.eos_token_id], c.word


def test_word_splits_equal_the_real_tokenizer(tmp_path):
    folder = model_folder(tmp_path / "x", TOKENIZER_MERGES + EXTRA)
    [tok] = model_tokenizers(str(folder))
    reference = real(folder, "tokenizer")
    for word in WORDS:
        assert tok.word_tokens(word) == reference.tokenize(word), word
    prompt = "a photo of ohwx dog, zyx-style"
    assert tok.text_tokens(prompt) == reference.tokenize(prompt)


def test_probe_is_the_max_cosine_to_common_words_over_both_encoders(sdxl):
    result = CliRunner().invoke(
        app, ["tokens", "builtin:tiny-sdxl", "--probe", "--json", "--min-length", "2"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["candidates"]
    pipeline = build_pipeline("builtin:tiny-sdxl")
    tokenizers = model_tokenizers("builtin:tiny-sdxl")
    for row in rows:
        best = -2.0
        for e, encoder in enumerate((pipeline.text_encoder, pipeline.text_encoder_2)):
            table = encoder.get_input_embeddings().weight.detach()
            mine = table[row["ids"][e]]
            for other in common_token_ids(tokenizers[e]):
                if other != row["ids"][e]:
                    best = max(best, float(torch.cosine_similarity(mine, table[other], dim=0)))
        assert row["similarity"] == pytest.approx(best, abs=1e-5)
    assert [r["similarity"] for r in rows] == sorted(r["similarity"] for r in rows)


def test_probe_reads_a_diffusers_folder(sdxl):
    result = CliRunner().invoke(app, ["tokens", str(sdxl), "--probe", "--json", "--min-length", "2"])
    builtin = CliRunner().invoke(
        app, ["tokens", "builtin:tiny-sdxl", "--probe", "--json", "--min-length", "2"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["candidates"] == json.loads(builtin.output)["candidates"]


@pytest.mark.parametrize(
    ("model", "pairs"),
    [
        ("builtin:tiny-sdxl-refiner", [("tokenizer_2", "text_encoder_2")]),  # OpenCLIP bigG only
        ("builtin:tiny-flux", [("tokenizer", "text_encoder")]),  # CLIP-L; its T5 is not a BPE tokenizer
        ("builtin:tiny-sd3", [("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")]),
    ],
)
def test_the_family_pairs_each_clip_tokenizer_with_its_encoder(model, pairs, tmp_path):
    """The registry says which tokenizers are CLIP's and which encoder each feeds, and --probe reads those
    encoders. A tiny model's folder is of no detectable family (its widths are no real model's): its CLIP
    tokenizer folders are read by their configs, and pair with the encoders of the same names."""
    assert [(t.name, t.encoder) for t in model_tokenizers(model)] == pairs
    folder = materialize(model, tmp_path / "m")
    assert [t.name for t in model_tokenizers(str(folder))] == [name for name, _ in pairs]
    result = CliRunner().invoke(app, ["tokens", str(folder), "--probe", "--json", "--count", "3"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["tokenizers"] == [name for name, _ in pairs]
    pipeline = build_pipeline(model)
    tokenizers = model_tokenizers(model)
    for row in data["candidates"]:
        best = -2.0
        for e, (_, encoder) in enumerate(pairs):
            table = getattr(pipeline, encoder).get_input_embeddings().weight.detach()
            for other in common_token_ids(tokenizers[e]):
                if other != row["ids"][e]:
                    best = max(
                        best, float(torch.cosine_similarity(table[row["ids"][e]], table[other], dim=0))
                    )
        assert row["similarity"] == pytest.approx(best, abs=1e-5)
