"""Prompts beyond one CLIP window (`model.max_tokens` 150/225), encoded as kohya's `max_token_length` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.text import tokenize
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec

KOHYA = json.loads((Path(__file__).parent / "data" / "kohya_long_prompt_ids.json").read_text())
CAPTIONS = KOHYA["captions"]  # a short one, one over 75 tokens, one over 225 (cut)


def _parts(family: str):
    pipe = build_pipeline(f"builtin:tiny-{family}")
    two = family == "sdxl"
    encoders = [pipe.text_encoder, *([pipe.text_encoder_2] if two else [])]
    tokenizers = [pipe.tokenizer, *([pipe.tokenizer_2] if two else [])]
    return encoders, tokenizers


@pytest.mark.parametrize("case", sorted(KOHYA["ids"]))
def test_windows_equal_kohyas_token_ids(case):
    """Recorded from kohya's get_input_ids on the same tokenizers (pad = EOS for SD1's, pad "!" for SD2's and
    SDXL's second: windows then end with an EOS, and an empty window starts BOS, EOS)."""
    family, max_tokens = case.split("-")
    _, tokenizers = _parts(family)
    for tokenizer, expected in zip(tokenizers, KOHYA["ids"][case]):
        assert tokenize(tokenizer, CAPTIONS, int(max_tokens)).tolist() == expected


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_joined_states_are_each_windows_inner_positions(family):
    """Each window is encoded alone; the joined sequence is the first BOS, every window's 75 inner positions
    and the last window's final position (computed here window by window)."""
    encoders, tokenizers = _parts(family)
    runtime = family_runtime(family)
    with torch.no_grad():
        out = runtime.encode_prompts(
            encoders, tokenizers, CAPTIONS, clip_skip=1, max_tokens=225, device="cpu"
        )
        expected = []
        for encoder, tokenizer in zip(encoders, tokenizers):
            ids = tokenize(tokenizer, CAPTIONS, 225)  # (B, 3, 77)
            if family == "sdxl":  # the penultimate layer
                windows = [encoder(ids[:, k], output_hidden_states=True).hidden_states[-2] for k in range(3)]
            else:  # the last layer, after the final norm
                windows = [encoder(ids[:, k])[0] for k in range(3)]
            parts = [windows[0][:, :1], *(w[:, 1:76] for w in windows), windows[-1][:, 76:]]
            expected.append(torch.cat(parts, dim=1))
    assert out["prompt_embeds"].shape == (3, 227, sum(e.config.hidden_size for e in encoders))
    assert torch.allclose(out["prompt_embeds"], torch.cat(expected, dim=-1), atol=1e-6)
    if family == "sdxl":  # the pooled output is the first window's
        first = tokenize(tokenizers[1], CAPTIONS, 225)[:, 0]
        assert torch.allclose(out["pooled"], encoders[1](first).text_embeds, atol=1e-6)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_short_prompt_starts_as_its_one_window_encoding(family):
    encoders, tokenizers = _parts(family)
    runtime = family_runtime(family)
    with torch.no_grad():
        one = runtime.encode_prompts(
            encoders, tokenizers, CAPTIONS[:1], clip_skip=1, max_tokens=75, device="cpu"
        )
        two = runtime.encode_prompts(
            encoders, tokenizers, CAPTIONS[:1], clip_skip=1, max_tokens=150, device="cpu"
        )
    assert one["prompt_embeds"].shape[1] == 77 and two["prompt_embeds"].shape[1] == 152
    assert torch.allclose(two["prompt_embeds"][:, :76], one["prompt_embeds"][:, :76], atol=1e-6)


LONG = " ".join(["ohwx toy on a wooden table, studio light"] * 12)  # ~100 tokens


@pytest.mark.parametrize(("base", "tokens"), [("builtin:tiny-sd1", 225), ("builtin:tiny-sdxl", 150)])
def test_long_prompts_train_cache_validate_and_resume_exactly(tmp_path, base, tokens):
    extra = f"""
[validation]
prompts = ["{LONG}"]
every = 2
steps = 2
"""
    spec = write_spec(tmp_path, base=base, steps=4, extra=extra, dataset_extra=f'prompt = "{LONG}"')
    text = spec.read_text().replace('prompt = "a photo of ohwx toy"\n', "")
    spec.write_text(
        text.replace(f'base = "{base}"', f'base = "{base}"\nmax_tokens = {tokens}\nclip_skip = 2')
    )
    whole = execute(compile_spec(spec, ["output.dir=whole", "checkpoints.every=2"]))
    plan = compile_spec(spec, ["output.dir=parts", "checkpoints.every=2"])
    assert plan.model.max_tokens == tokens and plan.cache.text_embeddings
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert first.losses + second.losses == whole.losses
    assert (tmp_path / "whole" / "samples" / "step-000002" / "grid.png").is_file()
    from safetensors.torch import load_file

    cached = [load_file(f) for f in (tmp_path / "cache" / "text").rglob("*.safetensors")]
    assert cached and all(e["prompt_embeds"].shape[0] == 2 + tokens for e in cached)
