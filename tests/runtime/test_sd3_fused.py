"""SD3 with kohya's networks.lora_sd3 targets and shared down-projections (adapter.fused_projections): a tiny
SD3 run adapts every Linear of its joint blocks and nothing else, and each block's q/k/v (image and context
streams) keep one lora_A through training."""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer

from dbspec.families import family_spec
from dbspec.runtime.execute import execute
from tests.runtime.runspec import make_plan

_TARGETS = ", ".join(f'"{t}"' for t in family_spec("sd3").kohya_lora_targets)
KOHYA = (
    '[adapter]\nkind = "lora"\nrank = 4\nalpha = 2\nfused_projections = true\n'
    f"denoiser_targets = [{_TARGETS}]\n"
)


def test_tiny_sd3_trains_kohyas_targets_with_one_down_per_fused_qkv(tmp_path):
    result = execute(make_plan(tmp_path, base="builtin:tiny-sd3", steps=2, extra=KOHYA), keep_models=True)
    assert result.status == "finished"
    transformer = result.components.unet
    base = {n.removesuffix(".base_layer") for n, m in transformer.named_modules()
            if type(m) is torch.nn.Linear and ".lora_" not in n}  # fmt: skip
    adapted = {n for n, m in transformer.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == {n for n in base if n.startswith("transformer_blocks.")}
    for block in transformer.transformer_blocks:
        a = block.attn
        assert a.to_k.lora_A["default"].weight is a.to_q.lora_A["default"].weight
        assert a.add_v_proj.lora_A["default"].weight is a.add_q_proj.lora_A["default"].weight
        assert not torch.equal(
            a.to_q.lora_B["default"].weight, torch.zeros_like(a.to_q.lora_B["default"].weight)
        )
