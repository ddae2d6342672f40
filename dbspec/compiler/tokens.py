"""A model's CLIP BPE tokenizers read without torch: how a word tokenizes, and rare single-token identifiers.

CLIP's tokenizer lower-cases text, splits it into words, maps each word's UTF-8 bytes to printable symbols and
merges symbol pairs by rank (merges.txt, in the order BPE learned them: by frequency in CLIP's training text).
So a token made by a late merge was rare in that text: the later its merge, the less the model knows it. This
module reproduces the split for words (letters and digits; what identifiers are) from `vocab.json` and
`merges.txt` (or `tokenizer.json`), for built-in tiny models (dbspec/builtin.py), diffusers folders and hub
snapshots in the local cache (never the network). `dbspec tokens` and rule DBS295/DBS296 use it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs

from dbspec.builtin import END_OF_WORD, TOKENIZER_MERGES, builtin_model, bytes_to_unicode, is_builtin
from dbspec.compiler.common_words import COMMON_WORDS, STRONG_PRIORS
from dbspec.families import FAMILIES, family_spec

_BYTE_SYMBOLS = bytes_to_unicode()
# CLIP's word pattern for what identifiers hold: runs of letters, single digits, runs of other symbols.
_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)


class TokenizerError(Exception):
    """The model's tokenizer files cannot be found or read; the message says which and why."""


@attrs.frozen(kw_only=True)
class BpeTokenizer:
    """One CLIP BPE tokenizer: its folder name ("tokenizer", "tokenizer_2"), vocabulary and merge ranks, and
    the text encoder it feeds."""

    name: str
    vocab: dict[str, int] = attrs.field(eq=False, repr=False)
    ranks: dict[tuple[str, str], int] = attrs.field(eq=False, repr=False)
    encoder: str = ""  # its text encoder component; "" for a folder of an unknown family
    # Each token a merge made -> that merge's rank (0 = the first, most frequent, merge).
    merged: dict[str, int] = attrs.field(eq=False, repr=False, init=False)

    def __attrs_post_init__(self) -> None:
        merged: dict[str, int] = {}
        for (a, b), rank in sorted(self.ranks.items(), key=lambda item: item[1]):
            merged.setdefault(a + b, rank)
        object.__setattr__(self, "merged", merged)

    def word_tokens(self, word: str) -> list[str]:
        """The tokens of one word (lower-cased, as CLIP does): byte-level BPE with this tokenizer's ranks."""
        symbols = [_BYTE_SYMBOLS[b] for b in word.lower().encode("utf-8")]
        if not symbols:
            return []
        parts = [*symbols[:-1], symbols[-1] + END_OF_WORD]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, len(self.ranks) + 1))
            if best not in self.ranks:
                break
            parts = _merge(parts, best)
        return parts

    def text_tokens(self, text: str) -> list[str]:
        """The tokens of a prompt (without the start and end tokens)."""
        return [token for word in _WORDS.findall(text.lower()) for token in self.word_tokens(word)]

    def count(self, text: str) -> int:
        return len(self.text_tokens(text))


def _merge(parts: list[str], pair: tuple[str, str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            out.append(parts[i] + parts[i + 1])
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


# --- finding a model's tokenizers ---------------------------------------------------------------------------
def model_tokenizers(base: str, spec_dir: Path = Path("."), *, revision: str = "main") -> list[BpeTokenizer]:
    """Every tokenizer of `[model] base` (two for SDXL), read from local files only. TokenizerError when
    there are none to read (a single-file checkpoint, a hub id not in the local cache, missing files)."""
    if is_builtin(base):
        return _builtin_tokenizers(base)
    from dbspec.compiler.modelinfo import ModelFileError, inspect_model

    try:
        facts = inspect_model(base, spec_dir, revision=revision)
    except ModelFileError as exc:
        raise TokenizerError(str(exc)) from None
    if facts is None or not facts.resolved or not facts.path:
        note = facts.notes[0] if facts and facts.notes else f"{base} was not found"
        raise TokenizerError(note)
    root = Path(facts.path)
    if root.is_file():
        raise TokenizerError(
            f"{base} is a single-file checkpoint: it holds no tokenizer files; point at a diffusers folder "
            "(or the hub id of one in the local cache)"
        )
    pairs = (
        {t.tokenizer: t.component for t in family_spec(facts.family).clip_text_encoders}
        if facts.family in FAMILIES
        else {p.name: "" for p in sorted(root.glob("tokenizer*")) if p.is_dir() and _is_clip(p)}
    )
    if not pairs:
        raise TokenizerError(f"{root} has no tokenizer folder")
    return [attrs.evolve(read_tokenizer(root / name), encoder=encoder) for name, encoder in pairs.items()]


def _is_clip(folder: Path) -> bool:
    """A tokenizer folder of an undetected family is read unless its config names another class (T5)."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # read_tokenizer says what is wrong with it
    return "CLIP" in str(config.get("tokenizer_class", "CLIP")) if isinstance(config, dict) else True


def _builtin_tokenizers(base: str) -> list[BpeTokenizer]:
    try:
        model = builtin_model(base)
    except KeyError as exc:
        raise TokenizerError(str(exc.args[0])) from None
    from dbspec.builtin import tokenizer_vocab

    ranks = {pair: rank for rank, pair in enumerate(TOKENIZER_MERGES)}
    return [
        BpeTokenizer(name=t.tokenizer, vocab=tokenizer_vocab(), ranks=ranks, encoder=t.component)
        for t in family_spec(model.family).clip_text_encoders
    ]


def read_tokenizer(folder: Path) -> BpeTokenizer:
    """A tokenizer folder's vocab.json + merges.txt, else its tokenizer.json (all transformers 5 writes)."""
    vocab_file, merges_file, joined = folder / "vocab.json", folder / "merges.txt", folder / "tokenizer.json"
    try:
        if vocab_file.is_file() and merges_file.is_file():
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
            lines = merges_file.read_text(encoding="utf-8").splitlines()
            merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        elif joined.is_file():
            model = json.loads(joined.read_text(encoding="utf-8"))["model"]
            vocab = model["vocab"]
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        else:
            raise TokenizerError(f"{folder} has neither vocab.json + merges.txt nor tokenizer.json")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TokenizerError(f"cannot read the tokenizer in {folder}: {type(exc).__name__}: {exc}") from None
    ranks = {(m[0], m[1]): rank for rank, m in enumerate(merges) if len(m) == 2}
    return BpeTokenizer(name=folder.name, vocab=vocab, ranks=ranks)


# --- candidates ---------------------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class Candidate:
    """A candidate identifier: one token in every tokenizer, not a common word."""

    word: str
    rank: int  # the earliest of its merge ranks over the model's tokenizers: higher = rarer
    ids: tuple[int, ...]  # its token id in each tokenizer, in the model's order
    similarity: float | None = None  # --probe: max cosine to a common word's input embedding (lower = better)


_IDENTIFIER = re.compile(r"[a-z]{2,}")


def candidates(tokenizers: list[BpeTokenizer], *, min_length: int = 3) -> list[Candidate]:
    """Words that are a single token in every tokenizer, letters only, at least `min_length` long, neither a
    common word nor a known strong prior; rarest first (latest merge), then alphabetically."""
    excluded = COMMON_WORDS | STRONG_PRIORS.keys()
    found = []
    for token, rank in tokenizers[0].merged.items():
        word = token[: -len(END_OF_WORD)] if token.endswith(END_OF_WORD) else ""
        if len(word) < min_length or not _IDENTIFIER.fullmatch(word) or word in excluded:
            continue
        ranks = [rank] + [tok.merged.get(token, -1) for tok in tokenizers[1:]]
        if min(ranks) < 0 or any(tok.word_tokens(word) != [token] for tok in tokenizers):
            continue
        found.append(Candidate(word=word, rank=min(ranks), ids=tuple(tok.vocab[token] for tok in tokenizers)))
    return sorted(found, key=lambda c: (-c.rank, c.word))


def common_token_ids(tokenizer: BpeTokenizer) -> list[int]:
    """Ids of the common words that are one token in `tokenizer` (the --probe reference set)."""
    ids = []
    for word in sorted(COMMON_WORDS):
        tokens = tokenizer.word_tokens(word)
        if len(tokens) == 1 and tokens[0] in tokenizer.vocab:
            ids.append(tokenizer.vocab[tokens[0]])
    return ids
