"""Pivotal tuning's new tokens (`plan.pivotal`, compiler/pivotal.py): added to every tokenizer and text
encoder, trained in their own optimizer group, checkpointed, and exported as embedding files.

As diffusers' advanced DreamBooth script does, the whole input-embedding matrix of each text encoder is the
trained parameter (the rest of the encoder stays frozen) and after every optimizer step the rows of the old
vocabulary are put back from a copy taken at the start, so only the new rows change. A token of N vectors is
added as `tok`, `tok_1` .. `tok_{N-1}` and a prompt's `tok` is expanded to all N before tokenizing (what
diffusers' `maybe_convert_prompt` does in its pipelines, so validation and a loaded export see the same ids).

Exports, one file per token in `<weights folder>/embeddings/`: SD1/SD2 `{"emb_params": (N, D)}`, SDXL
`{"clip_l": (N, 768), "clip_g": (N, 1280)}`, the SDXL refiner `{"clip_g": (N, 1280)}` (the A1111/ComfyUI
layouts; each encoder's key is its family's `TextEncoderSpec.embedding_key`). diffusers loads them with
`pipe.load_textual_inversion(path, token=tok)` (SD1/SD2) or, per encoder,
`pipe.load_textual_inversion(sd["clip_l"], token=tok, text_encoder=pipe.text_encoder,
tokenizer=pipe.tokenizer)` and the same with `clip_g`, `text_encoder_2`, `tokenizer_2` (SDXL).
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import torch

from dbspec.families import family_spec
from dbspec.plan.model import PivotalPlan, Plan

STATE_PREFIX = "pivotal."  # keys of the token rows in a checkpoint's trainable state


class TokenError(Exception):
    """A new token cannot be added (it is already in a tokenizer's vocabulary)."""


@attrs.define(eq=False)
class TokenTrainer:
    """The new rows of each text encoder's embedding matrix and the copy that restores the others."""

    plan: PivotalPlan
    embeddings: list  # the input-embedding weight of each text encoder
    ids: list[torch.Tensor]  # the new token ids, per text encoder
    keep: list[torch.Tensor]  # per encoder: bool mask of the rows that must not change
    original: list[torch.Tensor]  # per encoder: the matrix as it was (rows under `keep` are restored)
    active: bool = True

    @property
    def params(self) -> list:
        return list(self.embeddings)

    def group(self) -> dict:
        """The optimizer group of the new rows: its own LR, no weight decay (the old rows are restored
        anyway; decay would only shrink the new ones toward zero)."""
        return {"params": self.params, "lr": self.plan.lr, "name": "pivotal", "weight_decay": 0.0}

    def expand(self, prompts: list[str]) -> list[str]:
        """`tok` -> `tok tok_1 ..` for tokens of several vectors (single vectors stay as written)."""
        if self.plan.vectors == 1:
            return prompts
        out = []
        for prompt in prompts:
            for t in self.plan.tokens:
                prompt = prompt.replace(t.token, " ".join(t.added))
            out.append(prompt)
        return out

    @torch.no_grad()
    def after_step(self) -> None:
        """Put the old vocabulary's rows back (the optimizer may have moved them: weight decay, momentum)."""
        for weight, keep, original in zip(self.embeddings, self.keep, self.original):
            weight[keep] = original[keep]

    def stop(self) -> None:
        """The stop step: the rows get no more gradients (optimizers skip parameters without one)."""
        for weight in self.embeddings:
            weight.requires_grad_(False)
        self.active = False

    def state(self) -> dict[str, torch.Tensor]:
        return {
            f"{STATE_PREFIX}{i}": w.detach()[ids].to("cpu", copy=True)
            for i, (w, ids) in enumerate(zip(self.embeddings, self.ids))
        }

    @torch.no_grad()
    def restore(self, state: dict[str, torch.Tensor]) -> None:
        for i, (w, ids) in enumerate(zip(self.embeddings, self.ids)):
            w[ids] = state[f"{STATE_PREFIX}{i}"].to(w.device, w.dtype)


def split_state(trainable: dict) -> tuple[dict, dict]:
    """A checkpoint's trainable state -> (model weights, token rows)."""
    rows = {k: v for k, v in trainable.items() if k.startswith(STATE_PREFIX)}
    return {k: v for k, v in trainable.items() if not k.startswith(STATE_PREFIX)}, rows


def add_tokens(plan: Plan, text_encoders: list, tokenizers: list, seed: int) -> TokenTrainer:
    """Add the plan's tokens to each tokenizer (once per distinct tokenizer object) and a row each to its text
    encoder, initialised from `init_word` or randomly; only the embedding matrices then require gradients."""
    p = plan.pivotal
    assert p is not None
    names = [a for t in p.tokens for a in t.added]
    embeddings, ids, keep, original = [], [], [], []
    done: list = []
    for i, (tok, enc) in enumerate(zip(tokenizers, text_encoders)):
        if not any(tok is d for d in done):
            clash = [n for n in names if n in tok.get_vocab()]
            if clash:
                raise TokenError(
                    f"pivotal token {clash[0]!r} is already in the vocabulary of tokenizer {i + 1}: choose "
                    'another (e.g. "<ohwx>")'
                )
            tok.add_tokens(names)
            done.append(tok)
        new = torch.tensor(tok.convert_tokens_to_ids(names))
        enc.resize_token_embeddings(len(tok))
        _fp32_rows(enc.get_input_embeddings())
        weight = enc.get_input_embeddings().weight
        with torch.no_grad():
            weight[new.to(weight.device)] = _initial(weight, tok, p, len(names), seed + i)
        enc.requires_grad_(False)
        weight.requires_grad_(True)
        mask = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        mask[new.to(weight.device)] = False
        embeddings.append(weight)
        ids.append(new.to(weight.device))
        keep.append(mask)
        original.append(weight.detach().clone())
    return TokenTrainer(plan=p, embeddings=embeddings, ids=ids, keep=keep, original=original)


def _fp32_rows(embedding: torch.nn.Module) -> None:
    """A text encoder held in half precision keeps its embedding matrix in fp32 (small steps on the new rows
    would round away in bf16/fp16) and hands the rest of the encoder its own dtype."""
    dtype = embedding.weight.dtype
    if dtype == torch.float32:
        return
    embedding.float()
    embedding.register_forward_hook(lambda module, args, out: out.to(dtype))


def _initial(weight: torch.Tensor, tok, p: PivotalPlan, count: int, seed: int) -> torch.Tensor:
    """The first value of the new rows: the init word's token embeddings (vector j from its token j mod its
    length), else N(0, std of the existing matrix) as diffusers initialises them."""
    if p.init_word:
        word = tok(p.init_word, add_special_tokens=False).input_ids
        if not word:
            raise TokenError(f"pivotal.init_word {p.init_word!r} has no tokens")
        rows = torch.tensor([word[j % len(word)] for j in range(p.vectors)], device=weight.device)
        return weight.detach()[rows].repeat(len(p.tokens), 1)
    generator = torch.Generator().manual_seed(seed)
    std = weight.detach().float().std()
    return (torch.randn(count, weight.shape[1], generator=generator) * std).to(weight.device, weight.dtype)


def token_rows(plan: Plan, text_encoders: list, tokenizers: list) -> dict[str, list[torch.Tensor]]:
    """Each pivotal token's trained vectors, per text encoder: token -> [(N, D) per encoder]."""
    assert plan.pivotal is not None
    out: dict[str, list[torch.Tensor]] = {}
    for t in plan.pivotal.tokens:
        out[t.token] = [
            enc.get_input_embeddings().weight.detach()[tok.convert_tokens_to_ids(list(t.added))].float().cpu()
            for tok, enc in zip(tokenizers, text_encoders)
        ]
    return out


def embedding_keys(plan: Plan) -> tuple[str, ...]:
    """Each text encoder's key in an embedding file, in the order of the run's text encoders."""
    return tuple(t.embedding_key for t in family_spec(plan.model.family).text_encoders)


def file_name(token: str) -> str:
    """A file name for a token: its letters, digits, `-` and `_` (`<ohwx>` -> `ohwx`)."""
    return re.sub(r"[^\w-]", "", token) or "token"


def save_embeddings(folder: Path, plan: Plan, text_encoders: list, tokenizers: list) -> list[Path]:
    """Write each token as an A1111/ComfyUI embedding file (which diffusers' load_textual_inversion loads)."""
    from safetensors.torch import save_file

    keys = embedding_keys(plan)
    written = []
    folder = Path(folder) / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    for token, rows in token_rows(plan, text_encoders, tokenizers).items():
        path = folder / f"{file_name(token)}.safetensors"
        save_file(
            {k: r.contiguous() for k, r in zip(keys, rows)},
            str(path),
            metadata={"token": token, "vectors": str(rows[0].shape[0])},
        )
        written.append(path)
    return written


def load_embeddings(pipe, folder: Path, plan: Plan) -> None:
    """Load the run's token files into a diffusers pipeline with its own loader, once per text encoder (as
    diffusers documents for SDXL), so `dbspec sample` of an adapter run knows the tokens."""
    from safetensors.torch import load_file

    assert plan.pivotal is not None
    encoders = family_spec(plan.model.family).text_encoders
    for t in plan.pivotal.tokens:
        path = Path(folder) / "embeddings" / f"{file_name(t.token)}.safetensors"
        state = load_file(str(path))
        for spec in encoders:
            encoder, tokenizer = getattr(pipe, spec.component), getattr(pipe, spec.tokenizer)
            pipe.load_textual_inversion(
                state[spec.embedding_key], token=t.token, text_encoder=encoder, tokenizer=tokenizer
            )
