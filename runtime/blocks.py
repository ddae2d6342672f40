"""Per-block LoRA (LoHa, LoKr) ranks, alphas and learning rates (`plan.adapter.blocks`; kohya networks.lora
`block_dims`, `block_alphas`, `conv_block_dims`, `conv_block_alphas`, `down/mid/up_lr_weight`; LyCORIS preset
files' `module_algo_map` / `name_algo_map` dims).

Each adapted denoiser module takes the first block whose pattern `re.search`es its path: its linear (and 1x1)
layers that block's rank and alpha, its 3x3 convolutions the block's conv rank and alpha; rank 0 leaves the
module without an adapter, as kohya skips a module whose block dim is 0. peft receives the result as exact
per-module `rank_pattern` / `alpha_pattern` entries and `exclude_modules`."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import torch

from dbspec.plan.model import AdapterPlan, BlockPlan
from dbspec.util.targets import targeted

if TYPE_CHECKING:
    from peft import PeftConfig


def block_of(blocks: tuple[BlockPlan, ...], path: str) -> BlockPlan | None:
    return next((b for b in blocks if re.search(b.pattern, path)), None)


class BlocksError(Exception):
    """Blocks that leave a trained component nothing to adapt; `key`: the spec table behind it."""

    def __init__(self, message: str, key: str):
        self.key = key
        super().__init__(message)


def with_blocks(
    config: PeftConfig, module: torch.nn.Module, adapter: AdapterPlan, component: str = ""
) -> PeftConfig:
    """`config` with every targeted module of `module` at its own rank and alpha (its block's, else the
    adapter's linear or convolution rank) as one exact pattern each, replacing the convolution-target
    patterns: no two patterns match one module, so the choice cannot depend on their order (diffusers reloads
    the config from JSON); rank-0 modules excluded. A text encoder (`component` named) takes
    `adapter.text_encoder_blocks`, searched in `<component>.<path>` (CLIP paths with `text_model.`, T5's as
    they are)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    excluded: list[str] = []
    for path, layer, block in _blocks_of(module, config.target_modules, blocks, component):
        # T-LoRA has no convolution rank: a patch convolution's layer takes the linear one (lycoris_tlora.py),
        # but a tlora block of another kind's adapter (runtime/mixed_kinds.py) its own conv_rank
        conv = (
            isinstance(layer, torch.nn.Conv2d)
            and tuple(layer.kernel_size) != (1, 1)
            and (adapter.kind != "tlora" or getattr(block, "conv_rank", 0) > 0)
        )
        # an IA^3 block beside another kind's layers: its input side (LyCORIS's train_on_input, BlockPlan)
        on_input = block is not None and block.kind == "adapter" and getattr(block, "on_input", False)
        if block is not None and block.rank and adapter.kind in ("full", "ia3") and block.kind == "adapter":
            block = None  # a full / IA^3 block's lr_scale (compiler/adapters.py _scale_blocks): no size
        if block is None and adapter.kind in (
            "diag-oft",
            "boft",
        ):  # peft's rank: its block-size hint, alpha: constraint
            rank, alpha = adapter.oft_block_size, adapter.oft_constraint
        elif block is None and adapter.kind == "full":  # a trained copy: no rank (rank-0 blocks: excluded)
            rank, alpha = 1, 1.0
        elif block is None and adapter.kind == "ia3":  # peft's rank: the scale's side (rank-0: excluded)
            from dbspec.runtime.lycoris_ia3 import INPUT_SIDE_RANK

            rank, alpha = (INPUT_SIDE_RANK if on_input or targeted(path, adapter.input_targets) else 1), 1.0
        elif block is None:
            rank, alpha = (adapter.conv_rank, adapter.conv_alpha) if conv else (adapter.rank, adapter.alpha)
        else:
            rank, alpha = (block.conv_rank, block.conv_alpha) if conv else (block.rank, block.alpha)
        if rank == 0:
            excluded.append(path)
            continue
        ranks[re.escape(path)] = rank
        alphas[re.escape(path)] = alpha
    if not ranks:
        table = "adapter.text_encoder_blocks" if component else "adapter.blocks"
        raise BlocksError(
            f"{table} puts every adapted layer of {component or 'the denoiser'} at rank 0: there is nothing "
            f"to train there; give some layers a rank, or freeze {component or 'the denoiser'} (train.*)",
            f"{table}[0].pattern" if blocks else table,
        )
    out = dataclasses.replace(
        config,
        rank_pattern=ranks,
        alpha_pattern=alphas,
        # one regular expression peft full-matches: a list would also exclude every module whose path ends
        # with an excluded path (Flux's top-level proj_out would take the single blocks' proj_out along)
        exclude_modules="|".join(re.escape(p) for p in excluded) or None,
    )
    custom = getattr(config, "_custom_modules", None)  # not a dataclass field: replace drops it
    if custom:  # a custom layer's dispatch (DyLoRA's, runtime/dylora.py)
        out._register_custom_module(custom)
    return out


def _blocks_of(module: torch.nn.Module, targets, blocks: tuple[BlockPlan, ...], component: str):
    """(path, layer, its block or None) of each layer of `module` peft adapts (`targets`); a text encoder's
    (`component` named) blocks are searched in `<component>.<path>`."""
    text_path, targets = clip_path_of(module), frozenset(targets)
    for path, layer in module.named_modules():
        if path and targeted(path, targets):
            yield path, layer, block_of(blocks, f"{component}.{text_path(path)}" if component else path)


def block_factors(module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = "") -> dict:
    """{path: LoKr factor} of the layers whose block sets its own `factor` (LyCORIS's map entries)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    if not any(b.factor for b in blocks):
        return {}
    return {
        path: block.factor
        for path, _, block in _blocks_of(module, targets, blocks, component)
        if block is not None and block.factor
    }


def block_switches(module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = "") -> dict:
    """{path: {"decompose_both", "full_matrix", "tucker", "unbalanced_factorization": bool}} of the LoKr
    layers whose block sets one of them itself (LyCORIS's map entries; the plan settled a full layer's
    decompose_both and tucker off)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    keys = ("decompose_both", "full_matrix", "tucker", "unbalanced_factorization")
    if not any(getattr(b, k) != "adapter" for b in blocks for k in keys):
        return {}
    return {
        path: {
            k: getattr(adapter, k) if getattr(block, k) == "adapter" else getattr(block, k) == "on"
            for k in keys
        }
        for path, _, block in _blocks_of(module, targets, blocks, component)
        if block is not None and any(getattr(block, k) != "adapter" for k in keys)
    }


def block_rescaled(module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = "") -> dict:
    """{id(layer): rescaled} of the Diag-OFT / BOFT layers whose block sets its own row rescale (LyCORIS's map
    entries' `rescaled`)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    return {
        id(layer): block.rescaled == "on"
        for _, layer, block in _blocks_of(module, targets, blocks, component)
        if block is not None and block.rescaled != "adapter"
    }


def block_sig_types(module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = "") -> dict:
    """{id(layer): sig_type} of the T-LoRA layers whose block sets its own SVD start (LyCORIS's map entries'
    `sig_type`)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    return {
        id(layer): block.sig_type
        for _, layer, block in _blocks_of(module, targets, blocks, component)
        if block is not None and block.sig_type != "principal"
    }


def block_random_starts(
    module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = ""
) -> frozenset:
    """The ids of the T-LoRA layers whose block starts them from a random matrix's SVD (LyCORIS's map
    entries' `use_data_init` false)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    return frozenset(
        id(layer)
        for _, layer, block in _blocks_of(module, targets, blocks, component)
        if block is not None and not block.data_init
    )


def block_units(module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = "") -> dict:
    """{id(layer): unit} of the DyLoRA layers whose block sets its own ranks per block (LyCORIS's map
    entries' `block_size`)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    return {
        id(layer): block.unit
        for _, layer, block in _blocks_of(module, targets, blocks, component)
        if block is not None and block.unit
    }


def block_zero_scales(
    module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = ""
) -> frozenset:
    """The ids of the DyLoRA layers whose block scales their update by 0 (`zero_scale`: LyCORIS's alpha
    buffer a file set to 0)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    return frozenset(
        id(layer)
        for _, layer, block in _blocks_of(module, targets, blocks, component)
        if block is not None and block.zero_scale
    )


def block_scalars(module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = "") -> dict:
    """{path: use_scalar} of the layers whose block sets LyCORIS's scalar itself (a map entry's)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    if not any(b.scalar != "adapter" for b in blocks):
        return {}
    return {
        path: block.scalar == "on"
        for path, _, block in _blocks_of(module, targets, blocks, component)
        if block is not None and block.scalar != "adapter"
    }


def block_glora_scalars(module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = "") -> dict:
    """block_scalars by layer id: GloraLayer builds its scalar, and a2 / b2's random init, by it (peft's
    dispatch sees the layer, not its path)."""
    own = block_scalars(module, targets, adapter, component)
    return {id(module.get_submodule(path)): on for path, on in own.items()}


def block_doras(module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = "") -> dict:
    """{path: weight_decompose} of the layers whose block sets LyCORIS's weight decomposition itself (a map
    entry's `weight_decompose`)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    if not any(b.dora != "adapter" for b in blocks):
        return {}
    return {
        path: block.dora == "on"
        for path, _, block in _blocks_of(module, targets, blocks, component)
        if block is not None and block.dora != "adapter"
    }


def block_dora_axes(module: torch.nn.Module, targets, adapter: AdapterPlan, component: str = "") -> dict:
    """{path: "output" / "input"} of the layers whose block sets LyCORIS's weight-decomposition axis itself
    (a map entry's `wd_on_out`; the plan keeps it only on layers that decompose)."""
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    if not any(b.dora_axis != "adapter" for b in blocks):
        return {}
    return {
        path: block.dora_axis
        for path, _, block in _blocks_of(module, targets, blocks, component)
        if block is not None and block.dora_axis != "adapter"
    }


def block_rank_stabilized(module: torch.nn.Module, adapter: AdapterPlan, component: str = "") -> dict:
    """{path: rs_lora} of `module`'s LoKr layers (peft's, once injected) whose block sets LyCORIS's rs_lora on
    full factors itself (`rank_stabilized`, a map entry's rs_lora); a text encoder's (`component` named)
    blocks searched as with_blocks searches them."""
    from peft.tuners.lokr import LoKrLayer

    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    if not any(b.rank_stabilized != "adapter" for b in blocks):
        return {}
    paths = tuple(path for path, layer in module.named_modules() if isinstance(layer, LoKrLayer))
    return {
        path: block.rank_stabilized == "on"
        for path, _, block in _blocks_of(module, paths, blocks, component)
        if block is not None and block.rank_stabilized != "adapter"
    }


def block_rank_dropout_scales(
    module: torch.nn.Module, adapter: AdapterPlan, name: str, component: str
) -> int:
    """Set LyCORIS's rank-dropout rescale on `module`'s LoHa / LoKr layers (peft adapter `name`'s per-layer
    `rank_dropout_scale`, which runtime/loha_weight.py, peft's LoKr and runtime/fused_lycoris_dropout.py read
    at each draw) and LoRA layers (`dbspec_rank_dropout_scale`, which runtime/lora_dropout.py and
    fused_dropout.py read: LyCORIS LoConModule's rank-dropout forms) whose block sets its own (a map entry's
    rank_dropout_scale); how many layers."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lycoris_utils import LycorisLayer

    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    if not any(b.rank_dropout_scale != "adapter" for b in blocks):
        return 0
    kinds = (LycorisLayer, LoraLayer)
    paths = tuple(path for path, layer in module.named_modules() if isinstance(layer, kinds))
    count = 0
    for _, layer, block in _blocks_of(module, paths, blocks, component):
        if block is None or block.rank_dropout_scale == "adapter" or name not in layer.r:
            continue
        if isinstance(layer, LoraLayer):
            layer.dbspec_rank_dropout_scale = block.rank_dropout_scale == "on"
        else:
            layer.rank_dropout_scale[name] = block.rank_dropout_scale == "on"
        count += 1
    return count


def block_tuckers(module: torch.nn.Module, targets, adapter: AdapterPlan, paths: bool = False) -> dict:
    """{id(layer) (or its path with `paths`): Tucker form} of the denoiser's layers whose LoRA / LoHa block
    sets its own (a map entry's use_tucker; only k x k convolutions take the form)."""
    return {
        path if paths else id(layer): block.tucker == "on"
        for path, layer, block in _blocks_of(module, targets, adapter.blocks, "")
        if block is not None and block.tucker != "adapter"
    }


def full_layer_paths(module: torch.nn.Module, targets, adapter: AdapterPlan) -> list[str]:
    """The paths of the denoiser's layers (`targets`, with the adapter's convolution targets) that train as
    LyCORIS's full algo: their block's kind, else the adapter's, is "full" at a nonzero rank (a k x k
    convolution's the block's conv_rank). LyCORIS's FullModule.apply_to takes such a layer's weight and bias
    off it into its trained copy, so kohya's --fp8_base cast of the U-Net after apply_to passes them by:
    the cast backend leaves them out likewise (runtime/prepare.py)."""
    from dbspec.runtime.mixed_kinds import block_kind

    out = []
    for path, layer, block in _blocks_of(module, (*targets, *adapter.conv_targets), adapter.blocks, ""):
        if block_kind(adapter, block) != "full":
            continue
        conv = isinstance(layer, torch.nn.Conv2d) and tuple(layer.kernel_size) != (1, 1)
        if block is None or (block.conv_rank if conv else block.rank):
            out.append(path)
    return out


def block_param_groups(
    groups: list[dict],
    denoiser: torch.nn.Module,
    adapter: AdapterPlan,
    ratio: float = 0.0,
    text_encoders: tuple[tuple[str, torch.nn.Module], ...] = (),
    text_ratio: float = 0.0,
) -> list[dict]:
    """The optimizer groups split by block learning-rate scale (kohya's `unet_block<N>` groups at lr x the
    block's weight, LoRA+'s up group too) or the block's own rate (kohya's `network_reg_lrs` groups, the
    LoRA+ up group, `ratio`, at rate x ratio), and by the blocks' own `group` (`<name>_<group>`, at the
    rate it would have): the denoiser's groups by `adapter.blocks`, each text encoder's (`text_encoders`:
    (component, module)) by `adapter.text_encoder_blocks` (kohya Flux's network_reg_lrs on CLIP-L and T5-XXL,
    LoRA+ at `text_ratio`), a group of either split alike; groups at scale 1 keep their name, so runs without
    scales keep their optimizer state layout. Blocks at lr_scale 0 (no own rate) get no group: kohya leaves
    a group at rate 0 out of the optimizer, so their weights keep their init while their gradients are
    computed, counted by the clip norm (run.params) and, never cleared, add up
    (runtime/optimizer_blocks.py held_gradients)."""
    tables = [("denoiser", "", denoiser, adapter.blocks, ratio)]
    tables += [
        ("text_encoder", name, module, adapter.text_encoder_blocks, text_ratio)
        for name, module in text_encoders
    ]
    key: dict[int, tuple[float, float, str]] = {}
    ratios: dict[str, float] = {}
    for prefix, component, module, blocks, up_ratio in tables:
        if not any(b.lr_scale != 1.0 or b.lr or b.group for b in blocks):
            continue
        ratios[prefix] = up_ratio
        text_path = clip_path_of(module) if component else (lambda p: p)
        for name, param in module.named_parameters():
            # peft's LoRA, LoHa and LoKr parameters (and dbspec's scalars, DoRA scales) by their prefix
            found = re.search(r"\.(?:lora|hada|lokr)_", name)
            if param.requires_grad and found:
                path = text_path(name[: found.start()])
                block = block_of(blocks, f"{component}.{path}" if component else path)
                key[id(param)] = (
                    (block.lr_scale, block.lr, block.group) if block is not None else (1.0, 0.0, "")
                )
    if not ratios:
        return groups
    out: list[dict] = []
    for group in groups:
        prefix = next((p for p in ratios if group["name"].startswith(p)), None)
        if prefix is None:
            out.append(group)
            continue
        split: dict[tuple[float, float, str], list] = {}
        for param in group["params"]:
            split.setdefault(key.get(id(param), (1.0, 0.0, "")), []).append(param)
        up = group["name"].endswith("_lora_up")
        for (factor, own, unit), params in split.items():
            if not own and not factor:  # lr_scale 0: held at their init, out of the optimizer (no group)
                continue
            suffix = f"_{unit}" if unit else ""
            if own:
                rate = own * ratios[prefix] if up and ratios[prefix] else own
                name = f"{group['name']}_lr{own:g}{suffix}"
                out.append({**group, "params": params, "lr": rate, "name": name})
                continue
            name = (group["name"] if factor == 1.0 else f"{group['name']}_x{factor:g}") + suffix
            out.append({**group, "params": params, "lr": group["lr"] * factor, "name": name})
    return out


def clip_path_of(module: torch.nn.Module):
    """How a text encoder's module paths read in its blocks' patterns: CLIP's with `text_model.`, T5-XXL's
    (Flux's, SD3's) as transformers names them."""
    from dbspec.runtime.exports import clip_path  # exports imports the family registry

    return (lambda p: p) if type(module).__name__.startswith("T5") else clip_path
