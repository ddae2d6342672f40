"""`dbspec tokens MODEL`: candidate identifiers, one token in every tokenizer of the model, rarest first."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dbspec.compiler.tokens import Candidate, TokenizerError, candidates, common_token_ids, model_tokenizers


def list_tokens(model: str, *, count: int, min_length: int, revision: str, probe: bool, as_json: bool) -> int:
    """Print the candidates; exit code 0, or 1 when the model's tokenizers cannot be read."""
    try:
        tokenizers = model_tokenizers(model, Path("."), revision=revision)
    except TokenizerError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    found = candidates(tokenizers, min_length=min_length)
    if probe and found:
        found = _probed(model, revision, tokenizers, found)
    shown = found[:count] if count else found
    if as_json:
        rows = [
            {"word": c.word, "merge_rank": c.rank, "ids": list(c.ids), "similarity": c.similarity}
            for c in shown
        ]
        typer.echo(
            json.dumps({"model": model, "tokenizers": [t.name for t in tokenizers], "candidates": rows})
        )
        return 0
    names = " and ".join(t.name for t in tokenizers)
    order = "least like a common word first (--probe)" if probe else "latest BPE merge (rarest) first"
    typer.echo(f"{model}: {len(found)} words are one token in {names} and not common words; {order}")
    header = f"{'word':<20} {'merge rank':>10}" + (f" {'max cos to common':>18}" if probe else "")
    typer.echo(header)
    for c in shown:
        sim = f" {c.similarity:>18.3f}" if probe and c.similarity is not None else ""
        typer.echo(f"{c.word:<20} {c.rank:>10}{sim}")
    return 0


def _probed(model: str, revision: str, tokenizers, found: list[Candidate]) -> list[Candidate]:
    import attrs

    from dbspec.compiler.modelinfo import inspect_model
    from dbspec.runtime.token_probe import input_embeddings, max_similarity

    source = (
        model if model.startswith("builtin:") else inspect_model(model, Path("."), revision=revision).path
    )
    encoders = [t.encoder or t.name.replace("tokenizer", "text_encoder") for t in tokenizers]
    embeddings = input_embeddings(source, encoders)
    ids = [[c.ids[e] for c in found] for e in range(len(tokenizers))]
    sims = max_similarity(embeddings, ids, [common_token_ids(t) for t in tokenizers])
    probed = [attrs.evolve(c, similarity=s) for c, s in zip(found, sims)]
    return sorted(probed, key=lambda c: (c.similarity, -c.rank, c.word))
