"""`dbspec tokens --probe`: how much a text encoder's input embedding for a token resembles a common word's.

A token the model saw rarely keeps an embedding near its initialisation, unlike the embeddings of words it saw
often; the max cosine similarity to any common word's embedding says how much meaning the token already
carries (lower is better for an identifier). Reads only the input embedding matrix of each text encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def input_embeddings(model: str, encoders: list[str]) -> list[torch.Tensor]:
    """The input embedding matrix of each named text encoder of a built-in model or a diffusers folder."""
    if model.startswith("builtin:"):
        from dbspec.runtime.tiny import build_pipeline

        pipeline = build_pipeline(model)
        return [getattr(pipeline, name).get_input_embeddings().weight.detach().float() for name in encoders]
    return [_stored_embedding(Path(model) / name) for name in encoders]


# Hub folders store it under text_model.; transformers 5 saves CLIPTextModel without that prefix.
EMBEDDING = "embeddings.token_embedding.weight"
EMBEDDING_NAMES = ("text_model." + EMBEDDING, EMBEDDING)


def _stored_embedding(folder: Path) -> torch.Tensor:
    """The token embedding tensor alone, from the encoder's (possibly sharded) safetensors: no model built,
    so a multi-GB encoder costs one vocabulary-sized read."""
    from safetensors import safe_open

    files = sorted(folder.glob("model*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [folder / weight_map[name] for name in EMBEDDING_NAMES if name in weight_map]
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in EMBEDDING_NAMES:
                if name in handle.keys():
                    return handle.get_tensor(name).float()
    raise FileNotFoundError(f"no {EMBEDDING} in the safetensors files of {folder}")


def max_similarity(
    embeddings: list[torch.Tensor], candidate_ids: list[list[int]], common_ids: list[list[int]]
) -> list[float]:
    """For each candidate: the max over encoders and over common words (other than itself) of the cosine
    similarity of their input embeddings. `candidate_ids[e][i]` is candidate i's id in encoder e."""
    worst = None
    for table, ids, common in zip(embeddings, candidate_ids, common_ids):
        unit = torch.nn.functional.normalize(table, dim=1)
        sims = unit[ids] @ unit[common].T  # (candidates, common words)
        same = torch.tensor(ids)[:, None] == torch.tensor(common)[None, :]
        sims = sims.masked_fill(same, float("-inf")).amax(dim=1)
        worst = sims if worst is None else torch.maximum(worst, sims)
    return [] if worst is None else [float(v) for v in worst]
