"""LyCORIS's `algo = boft` (plan.adapter.kind "boft") as a peft LoRA custom layer.

LyCORIS's ButterflyOFTModule (lycoris/modules/boft.py, lycoris/functional/boft.py) rotates a layer's output
rows by a product of m butterfly stages. The out rows split as block_num x block_size
(power2factorization(out, lora_dim): block_size even and at most lora_dim, block_num a power of two; no such
split: refused), m = popcount(block_num - 1) + 1 stages, each with block_num Cayley rotations R = (I + Q)(I -
Q)^-1, Q = B - B^T (COFT: Q over all stages scaled down to norm constraint x out when larger). Stage i
regroups the rows in strides of 2^i x block_size / 2 before applying its block-diagonal R (R W per block, not
diag-oft's R^T W). The weight becomes the rotated W times a trained per-row `rescale` when `rescaled`; the
forward adds op(x, W' - W) with no bias. It saves `oft_blocks` (4-D: stages, blocks, size, size), `rescale`
and `alpha`.

`BoftLayer` is DiagOftLayer (lycoris_oft.py) with the 4-D blocks and the butterfly product: the same
`lora_oft_blocks` / `lora_oft_rescale` ParameterDicts, peft's rank the lora_dim, its alpha the constraint."""

from __future__ import annotations


import torch
from torch import nn

from dbspec.runtime.lycoris_oft import DiagOftLayer, oft_config


def power2_factorization(dimension: int, factor: int) -> tuple[int, int]:
    """LyCORIS's power2factorization: (block_size, block_num), block_size even and <= factor (any, for -1),
    block_num the largest power of two found dividing the dimension that way; (0, 0) when none does."""
    if factor == -1:
        factor = dimension
    m = n = 0
    while m <= factor:
        m += 2
        while dimension % m != 0 and m < dimension:
            m += 2
        if m > factor:
            break
        if bin(dimension // m).count("1") == 1:
            n = dimension // m
    return (dimension // n, n) if n else (0, 0)


def boft_stages(block_num: int) -> int:
    return bin(block_num - 1).count("1") + 1


class BoftLayer(DiagOftLayer):
    """LyCORIS's ButterflyOFTModule: butterfly products of block-diagonal Cayley rotations of the rows."""

    def update_layer(
        self, adapter_name: str, config, r: int, lora_alpha: float, rescaled: bool = False, *a, **k
    ):
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            raise ValueError("LyCORIS's boft: grouped or non-zero-padded convolutions are not supported")
        out_dim = base.weight.shape[0]
        block_size, block_num = power2_factorization(out_dim, r)
        if not block_num:
            raise ValueError(f"LyCORIS's boft cannot split {out_dim} output rows with lora_dim {r}")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = 1.0
        self.constraint[adapter_name] = float(lora_alpha) * out_dim  # LyCORIS: constraint x out_dim
        blocks = torch.zeros(boft_stages(block_num), block_num, block_size, block_size)
        self.lora_oft_blocks[adapter_name] = nn.Parameter(blocks)
        if rescaled:
            shape = (out_dim, *[1] * (base.weight.dim() - 1))
            self.lora_oft_rescale[adapter_name] = nn.Parameter(torch.ones(shape))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def rotation(self, adapter: str) -> torch.Tensor:
        """R per stage and block (LyCORIS's get_r over the 4-D blocks, one norm for all of them)."""
        blocks = self.lora_oft_blocks[adapter]
        eye = torch.eye(blocks.shape[-1], device=blocks.device, dtype=blocks.dtype)
        q = blocks - blocks.transpose(-1, -2)
        constraint = self.constraint[adapter]
        if constraint > 0:
            norm = torch.norm(q) + 1e-8
            if norm > constraint:
                q = q * constraint / norm
        return (eye + q) @ (eye - q).float().inverse()

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """W' - W: the butterfly stages applied to the weight's rows, then the rescale."""
        rotation = self.rotation(adapter)
        size = rotation.shape[-1]
        half = size // 2
        org = self.get_base_layer().weight.to(rotation.dtype)
        rows = org
        for stage, blocks in enumerate(rotation):
            stride = 2**stage * half
            # rows (c, 2, stride) regrouped as (c, stride, 2), then blocks of `size` consecutive rows
            grouped = (
                rows.unflatten(0, (-1, 2, stride)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, size))
            )
            rotated = torch.einsum("b i j, b j ... -> b i ...", blocks, grouped)
            rows = rotated.flatten(0, 1).unflatten(0, (-1, stride, 2)).transpose(1, 2).flatten(0, 2)
        if adapter in self.lora_oft_rescale:
            rows = rows * self.lora_oft_rescale[adapter]
        return (rows - org).to(self.lora_oft_blocks[adapter].dtype)

    def __repr__(self) -> str:
        return "lycoris_boft." + super().__repr__()


def boft_config(targets: list[str], block: int, constraint: float, rescaled: bool):
    """A LoraConfig building BoftLayer on every target: peft's rank is LyCORIS's lora_dim, its alpha the
    constraint."""
    return oft_config(targets, block, constraint, rescaled, layer=BoftLayer)


def has_boft(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_oft_blocks" in key and value.dim() == 4 for key, value in state.items())
