"""Weighted captions (`model.weighted_captions`, kohya's `--weighted_captions`): attention syntax parsed,
token ids and weights as kohya's SD/SDXL tokenize strategies make them, hidden states scaled per token, and a
tiny run with them training, caching and resuming exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dbspec.compiler.caches import text_key
from dbspec.runtime import weighted_prompts
from dbspec.runtime.execute import execute
from dbspec.runtime.families import family_runtime
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec

# Recorded from kohya sd-scripts' SdTokenizeStrategy.tokenize_with_weights (library/strategy_sd.py, HEAD of
# 2026-02) on the tiny tokenizers: ids (B, n, 77) and weights (B, n·77) per tokenizer.
KOHYA = json.loads((Path(__file__).parent / "data" / "kohya_weighted_caption_ids.json").read_text())
CAPTIONS = KOHYA["captions"]
DOWN = 1 / 1.1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain words", [("plain words", 1.0)]),
        ("", [("", 1.0)]),
        ("a (red) hat", [("a ", 1.0), ("red", 1.1), (" hat", 1.0)]),
        ("a [red] hat", [("a ", 1.0), ("red", DOWN), (" hat", 1.0)]),
        ("(red hat:1.5), dog", [("red hat", 1.5), (", dog", 1.0)]),
        ("((x)) y", [("x", 1.1 * 1.1), (" y", 1.0)]),
        ("((x:2)) y", [("x", 2 * 1.1), (" y", 1.0)]),  # the inner weight, then the outer bracket's 1.1
        ("(a [b] c)", [("a ", 1.1), ("b", 1.1 * DOWN), (" c", 1.1)]),
        ("open (rest", [("open ", 1.0), ("rest", 1.1)]),  # unclosed: to the end
        ("stray) and ]", [("stray) and ]", 1.0)]),  # unmatched closers are text
        (r"\(lit\) \\ x", [("(lit) \\ x", 1.0)]),  # escapes
        ("(a)(b)", [("ab", 1.1)]),  # equal neighbours merge
        ("time: 5 (x:0.5)", [("time: 5 ", 1.0), ("x", 0.5)]),
        ("no open:1.2) here", [("no open:1.2) here", 1.0)]),
    ],
)
def test_attention_syntax(text, expected):
    got = weighted_prompts.parse(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def _parts(family: str):
    pipe = build_pipeline(f"builtin:tiny-{family}")
    two = family == "sdxl"
    encoders = [pipe.text_encoder, *([pipe.text_encoder_2] if two else [])]
    tokenizers = [pipe.tokenizer, *([pipe.tokenizer_2] if two else [])]
    return encoders, tokenizers


def _kohya(case: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """kohya's ids (B, n, 77) and its weights joined as hidden states are: BOS, each window's 75 inner
    positions, the last position (kohya scales positions i·75+1 .. i·75+75 by window i's inner weights)."""
    ids = torch.tensor(KOHYA["ids"][case][k])
    flat = torch.tensor(KOHYA["weights"][case][k]).reshape(ids.shape)
    ones = torch.ones(ids.shape[0], 1)
    return ids, torch.cat([ones, *(flat[:, i, 1:-1] for i in range(ids.shape[1])), ones], dim=1)


@pytest.mark.parametrize("case", sorted(KOHYA["ids"]))
def test_ids_and_weights_equal_kohyas(case):
    family, max_tokens = case.split("-")
    _, tokenizers = _parts(family)
    for k, tokenizer in enumerate(tokenizers):
        ids, weights = weighted_prompts.tokenize(tokenizer, CAPTIONS, int(max_tokens))
        expected_ids, expected_weights = _kohya(case, k)
        assert ids.reshape(expected_ids.shape).tolist() == expected_ids.tolist()
        assert torch.allclose(weights, expected_weights, atol=1e-6)
    assert {round(w, 4) for w in expected_weights.flatten().tolist()} >= {1.0, 1.5, 0.8, 1.3, round(DOWN, 4)}


@pytest.mark.parametrize(("family", "max_tokens"), [("sd1", 75), ("sd2", 150), ("sdxl", 75), ("sdxl", 225)])
def test_hidden_states_are_scaled_by_kohyas_weights(family, max_tokens):
    """Computed here from kohya's ids and weights: each window encoded alone, joined (BOS, inner positions,
    last position), multiplied position-wise by the weights; no renormalisation. SDXL: both encoders'
    penultimate layers scaled, the pooled output not."""
    encoders, tokenizers = _parts(family)
    case = f"{family}-{max_tokens}"
    with torch.no_grad():
        out = family_runtime(family).encode_prompts(
            encoders, tokenizers, CAPTIONS, clip_skip=1, max_tokens=max_tokens, device="cpu", weighted=True
        )
        expected = []
        for k, encoder in enumerate(encoders):
            ids, weights = _kohya(case, k)
            if family == "sdxl":
                windows = [
                    encoder(ids[:, i], output_hidden_states=True).hidden_states[-2]
                    for i in range(ids.shape[1])
                ]
            else:
                windows = [encoder(ids[:, i])[0] for i in range(ids.shape[1])]
            if len(windows) == 1:
                joined = windows[0]
            else:
                joined = torch.cat(
                    [windows[0][:, :1], *(w[:, 1:76] for w in windows), windows[-1][:, 76:]], dim=1
                )
            expected.append(joined * weights.unsqueeze(-1))
        plain = family_runtime(family).encode_prompts(
            encoders, tokenizers, CAPTIONS, clip_skip=1, max_tokens=max_tokens, device="cpu"
        )
    assert torch.allclose(out["prompt_embeds"], torch.cat(expected, dim=-1), atol=1e-6)
    assert not torch.allclose(out["prompt_embeds"], plain["prompt_embeds"])
    # a caption without syntax encodes as it does unweighted
    assert torch.allclose(out["prompt_embeds"][2], plain["prompt_embeds"][2], atol=1e-6)
    if family == "sdxl":
        first = torch.tensor(KOHYA["ids"][case][1])[:, 0]
        assert torch.allclose(out["pooled"], encoders[1](first).text_embeds, atol=1e-6)


WEIGHTED = "(ohwx:1.4) toy, [photo], ((red)), studio light"


@pytest.mark.parametrize("shuffle", [False, True])
def test_weighted_captions_train_cache_and_resume_exactly(tmp_path, shuffle):
    """Shuffled, the caption is processed first and the syntax parsed in the result (as kohya); without
    shuffling the weighted embeddings are cached under their own keys."""
    caption = f'prompt = "{WEIGHTED}"' + ("\nshuffle_caption = true\nkeep_tokens = 1" if shuffle else "")
    spec = write_spec(tmp_path, steps=4, dataset_extra=caption)
    text = spec.read_text().replace('prompt = "a photo of ohwx toy"\n', "")
    spec.write_text(
        text.replace('base = "builtin:tiny-sd1"', 'base = "builtin:tiny-sd1"\nweighted_captions = true')
    )
    plan = compile_spec(spec, ["output.dir=parts", "checkpoints.every=2"])
    assert plan.model.weighted_captions and plan.datasets[0].images[0].caption == WEIGHTED
    whole = execute(compile_spec(spec, ["output.dir=whole", "checkpoints.every=2"]))
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert first.losses + second.losses == whole.losses
    plain = execute(compile_spec(spec, ["output.dir=plain", "model.weighted_captions=false"]))
    assert plain.losses != whole.losses
    unweighted = compile_spec(spec, ["model.weighted_captions=false"]).model
    assert text_key(WEIGHTED, plan.model, "float32") != text_key(WEIGHTED, unweighted, "float32")
    if not shuffle:
        assert plan.cache.text_embeddings and any((tmp_path / "cache" / "text").rglob("*.safetensors"))
