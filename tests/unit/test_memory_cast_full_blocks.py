"""The memory estimate with the cast backend (kohya's --fp8_base) counts the layers of LyCORIS's full algo at
their held dtype, not at one byte: kohya casts after FullModule.apply_to took their weights into its copies,
and the cast backend leaves them float likewise (runtime/blocks.py full_layer_paths; compiler/cast_float.py).
Their sizes come from the model's safetensors headers; without a diffusers folder the whole denoiser bounds
them, which the plan's note says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from test_compile import diffusers_folder, image, planned_ok, write_spec

from dbspec.compiler.memory import DTYPE_BYTES
from dbspec.plan.model import Plan

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"
UNET = {
    "conv_in.weight": np.zeros((8, 4, 3, 3), np.float32),
    f"{ATTN}.attn1.to_q.weight": np.zeros((8, 8), np.float32),
    f"{ATTN}.attn2.to_q.weight": np.zeros((8, 16), np.float32),
    f"{ATTN}.attn2.to_q.bias": np.zeros(8, np.float32),
    f"{ATTN}.attn2.to_k.weight": np.zeros((8, 24), np.float32),
}
CAST = {"quantize_denoiser": "fp8", "quantize_backend": "cast"}


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    image(tmp_path / "inst" / "a.png", (64, 64))
    return tmp_path


def _planned(toy: Path, kind: str, base: str = "models/sd15") -> Plan:
    """A LoRA on to_q / to_k whose block over attn2's to_q is of `kind`, the denoiser cast to fp8."""
    adapter = {"kind": "lora", "rank": 2, "alpha": 2.0, "denoiser_targets": ["to_q", "to_k"]}
    spec = write_spec(toy, model={"base": base}, adapter=adapter, optimizer={"lr": 1e-4}, precision=CAST)
    block = f'blocks = [{{pattern = "attn2\\\\.to_q$", kind = "{kind}", rank = 1, alpha = 1.0}}]'
    text = spec.read_text(encoding="utf-8").replace("[adapter]\n", f"[adapter]\n{block}\n", 1)
    spec.write_text(text, encoding="utf-8")
    return planned_ok(toy)


def test_full_block_layers_count_at_their_held_dtype_from_the_models_files(toy):
    diffusers_folder(toy / "models" / "sd15")
    save_file(UNET, str(toy / "models" / "sd15" / "unet" / "diffusion_pytorch_model.safetensors"))
    full, lora = _planned(toy, "full"), _planned(toy, "lora")
    unet = next(c for c in full.precision.components if c.name == "unet")
    assert unet.quantized == "fp8" and full.precision.quantize_backend == "cast"
    kept = UNET[f"{ATTN}.attn2.to_q.weight"].size + UNET[f"{ATTN}.attn2.to_q.bias"].size  # 136
    adapter_bytes = 4 * (sum(full.adapter.params.values()) - sum(lora.adapter.params.values()))  # fp32
    # the same weights but the full layer's: (held - 1) bytes more each, beside the adapters' own difference
    assert full.memory.weights - lora.memory.weights == adapter_bytes + kept * (DTYPE_BYTES[unet.dtype] - 1)
    assert any(f"{kept:,} parameters of LyCORIS full layers stay" in n for n in full.memory.notes)
    assert any("counted from the model's files" in n for n in full.memory.notes)
    assert not any("LyCORIS full layers" in n for n in lora.memory.notes)


def test_without_the_models_files_the_whole_denoiser_bounds_them(toy):
    full, lora = _planned(toy, "full", "builtin:tiny-sd1"), _planned(toy, "lora", "builtin:tiny-sd1")
    unet = next(c for c in full.precision.components if c.name == "unet")
    adapter_bytes = 4 * (sum(full.adapter.params.values()) - sum(lora.adapter.params.values()))
    extra = unet.params * (DTYPE_BYTES[unet.dtype] - 1)
    assert full.memory.weights - lora.memory.weights == adapter_bytes + extra
    assert any("an upper bound, the whole denoiser" in n for n in full.memory.notes)
