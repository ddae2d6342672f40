"""Run kohya-ss sd-scripts' own Sd3TextEncodingStrategy.encode_tokens (library/strategy_sd3.py, commit
48d368fa) with and without `apply_lg_attn_mask` / `apply_t5_attn_mask` (as its caching calls it: dropout off)
on builtin:tiny-sd3's text encoders (dbspec's seeded tiny models; run with dbspec importable) and fixed
prompts; save the outputs. Run in a scratch folder holding strategy_sd3.py
(`git show <commit>:library/strategy_sd3.py > strategy_sd3.py`)."""

import ast
import random
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch
from safetensors.torch import save_file

from dbspec.runtime.tiny import build_pipeline

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"
PROMPTS = ["a photo of sks dog", "a"]
T5_LENGTH = 16


def extract(path, names):
    source = Path(path).read_text()
    tree = ast.parse(source)
    return "\n\n".join(
        ast.get_source_segment(source, n)
        for n in tree.body
        if isinstance(n, ast.ClassDef) and n.name in names
    )


ns = {"torch": torch, "random": random, "Any": Any, "List": List, "Optional": Optional, "Tuple": Tuple,
      "TextEncodingStrategy": object, "TokenizeStrategy": object}  # fmt: skip
exec(extract("strategy_sd3.py", {"Sd3TextEncodingStrategy"}), ns)
Strategy = ns["Sd3TextEncodingStrategy"]

pipe = build_pipeline("builtin:tiny-sd3")
encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
# what Sd3TokenizeStrategy.tokenize returns, with the tiny model's tokenizers: ids and attention masks
clip = dict(max_length=77, padding="max_length", truncation=True, return_tensors="pt")
l_tok, g_tok = pipe.tokenizer(PROMPTS, **clip), pipe.tokenizer_2(PROMPTS, **clip)
t5_tok = pipe.tokenizer_3(PROMPTS, max_length=T5_LENGTH, padding="max_length", truncation=True,
                          return_tensors="pt")  # fmt: skip
tokens = [l_tok.input_ids, g_tok.input_ids, t5_tok.input_ids]
tokens += [l_tok.attention_mask, g_tok.attention_mask, t5_tok.attention_mask]

out = {}
for name, lg, t5 in (("plain", False, False), ("both", True, True)):
    with torch.no_grad():
        lg_out, t5_out, lg_pooled, *_ = Strategy(lg, t5).encode_tokens(
            None, encoders, tokens, apply_lg_attn_mask=lg, apply_t5_attn_mask=t5, enable_dropout=False
        )
    out.update({f"{name}.lg_out": lg_out, f"{name}.t5_out": t5_out, f"{name}.lg_pooled": lg_pooled})
save_file(
    {k: v.contiguous() for k, v in out.items()}, "kohya_sd3_masks.safetensors", metadata={"commit": COMMIT}
)
print({k: tuple(v.shape) for k, v in out.items()})
