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

from dbspec.plan.boft import power2_factorization  # noqa: F401 (LyCORIS's split, torch-free)
from dbspec.runtime.lycoris_oft import DiagOftLayer, oft_config


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
            where = f" of `{self.oft_name}`" if getattr(self, "oft_name", "") else ""
            raise ValueError(
                f"LyCORIS's boft cannot split the {out_dim} output rows{where} with block_size (lora_dim) "
                f"{r}: power2factorization needs an even block size b <= block_size with width / b a "
                "power of two (LyCORIS raises too); choose another block_size or leave the layer out of "
                "the targets"
            )
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

    def _rotated_delta(self, adapter: str, rows: torch.Tensor) -> torch.Tensor:
        """The butterfly stages applied to `rows` (dimension 0: a weight's rows, or the output's channels in
        bypass mode), then the rescale, minus `rows`."""
        rotation = self.rotation(adapter)
        size = rotation.shape[-1]
        half = size // 2
        org = rows.to(rotation.dtype)
        rows = org
        for stage, blocks in enumerate(rotation):
            stride = 2**stage * half
            # rows (c, 2, stride) regrouped as (c, stride, 2), then blocks of `size` consecutive rows
            grouped = (
                rows.unflatten(0, (-1, 2, stride)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, size))
            )
            rotated = torch.einsum("b i j, b j ... -> b i ...", blocks, grouped)
            rows = rotated.flatten(0, 1).unflatten(0, (-1, stride, 2)).transpose(1, 2).flatten(0, 2)
        rescale = self._rescale(adapter, org)
        if rescale is not None:
            rows = rows * rescale
        return (rows - org).to(self.lora_oft_blocks[adapter].dtype)

    def __repr__(self) -> str:
        return "lycoris_boft." + super().__repr__()


def boft_config(targets: list[str], block: int, constraint: float, rescaled: bool, bypass: bool = False):
    """A LoraConfig building BoftLayer on every target: peft's rank is LyCORIS's lora_dim, its alpha the
    constraint; `bypass`: LyCORIS's bypass forward (the output rotated)."""
    return oft_config(targets, block, constraint, rescaled, layer=BoftLayer, bypass=bypass)


def has_boft(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_oft_blocks" in key and value.dim() == 4 for key, value in state.items())
