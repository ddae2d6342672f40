"""Adapters (LoRA with optional DoRA, LoHa, LoKr, each optionally on convolutions) through peft's own API, and
which parameters train.

Adapters are injected with `peft.inject_adapter_in_model` for every module, UNet and text encoders alike, not
through diffusers' or transformers' `add_adapter`: those integrations gate on peft versions of their own
(transformers 5.24 asks for peft >= 0.22, unreleased when it shipped), and peft's API is
what they both call."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

from typing import TYPE_CHECKING

import torch

from dbspec.plan.model import AdapterPlan

if TYPE_CHECKING:  # peft is imported where an adapter is built or read, never by a full fine-tune
    from peft import PeftConfig

ADAPTER_NAME = "default"


def lycoris_dora(adapter: AdapterPlan) -> bool:
    """Some layer trains LyCORIS's weight decomposition (runtime/lycoris_dora.py), not peft's `use_dora`: the
    plan's DoRA in LyCORIS's form, or a block's own (a LyCORIS map entry's weight_decompose)."""
    blocks = (*adapter.blocks, *adapter.text_encoder_blocks)
    return (adapter.dora or any(b.dora == "on" for b in blocks)) and adapter.dora_form == "lycoris"


def columns(adapter: AdapterPlan) -> bool:
    """Some layer may decompose per input column (runtime/lycoris_dora.py; on fused Linears its parts tied
    by tie_fused_doras): the adapter's `dora_axis`, or a block's own (a LyCORIS map entry's wd_on_out, a
    GLoRA / DyLoRA network's wd_on_output on its LoCon / LoHa / LoKr entries)."""
    blocks = (*adapter.blocks, *adapter.text_encoder_blocks)
    return adapter.dora_axis == "input" or any(b.dora_axis == "input" for b in blocks)


def any_scalar(adapter: AdapterPlan) -> bool:
    """Some layer trains LyCORIS's use_scalar: the adapter's `scalar`, or a block's own (a LyCORIS map
    entry's)."""
    blocks = (*adapter.blocks, *adapter.text_encoder_blocks)
    return adapter.scalar or any(b.scalar == "on" for b in blocks)


def any_tucker(adapter: AdapterPlan) -> bool:
    """Some LoCon layer trains in LyCORIS's Tucker form: the adapter's `tucker`, or a LoRA block's own (a
    LyCORIS map entry's use_tucker)."""
    return adapter.tucker or (adapter.kind == "lora" and any(b.tucker == "on" for b in adapter.blocks))


def norm_scalars(adapter: AdapterPlan) -> bool:
    """The plan's LoCon / LoHa layers carry a fixed scalar (at 1, never trained) for LyCORIS's max norm to
    multiply: LyCORIS's non-persistent `scalar` buffer without use_scalar. Saved and resumed with the layer;
    its exports fold it into `lora_up` / `hada_w1_a` as LyCORIS's custom_state_dict does. In a run of
    several kinds (runtime/mixed_kinds.py) the LoCon / LoHa layers of blocks of kind lora / loha too (each
    kind's pass asks with its own kind's adapter). The layers that train use_scalar's (the adapter's, a
    block's own) keep theirs, which the max norm multiplies (max_norm.add_norm_scalars): with the adapter's
    use_scalar, only where a block turns it off."""
    blocks = (*adapter.blocks, *adapter.text_encoder_blocks)
    kinds = {adapter.kind, *(b.kind for b in blocks if b.rank or b.conv_rank)}
    return bool(
        adapter.max_norm
        and adapter.max_norm_form == "lycoris"
        and kinds & {"lora", "loha"}
        and (not adapter.scalar or any(b.scalar == "off" for b in blocks))
    )


def lora_config(adapter: AdapterPlan, targets: tuple[str, ...], conv: bool = False) -> PeftConfig:
    """The peft config of the plan's adapter kind on `targets`; with `conv` (the UNet) also the plan's
    convolution targets, at their own rank and alpha through peft's rank_pattern / alpha_pattern."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    if adapter.kind == "full":  # LyCORIS's full algo: dbspec's own peft layer (lycoris_full.py)
        from dbspec.runtime.lycoris_full import with_full

        convs = adapter.conv_targets if conv else ()
        return with_full(LoraConfig(r=1, lora_alpha=1.0, target_modules=[*targets, *convs]))
    if adapter.kind == "ia3":  # LyCORIS's IA^3: dbspec's own peft layer (lycoris_ia3.py)
        from dbspec.runtime.lycoris_ia3 import ia3_config

        convs = adapter.conv_targets if conv else ()
        # `bypass`: LyCORIS bypass_mode (the output scaled, its bias too)
        return ia3_config([*targets, *convs], adapter.input_targets, adapter.bypass)
    if adapter.kind == "glora":  # LyCORIS's GLoRA: dbspec's own peft layer (lycoris_glora.py)
        from dbspec.runtime.lycoris_glora import glora_options, with_glora

        convs = adapter.conv_targets if conv and adapter.conv_rank else ()
        patterns = [re.escape(t) for t in convs]
        return with_glora(
            LoraConfig(
                r=adapter.rank,
                lora_alpha=adapter.alpha,
                target_modules=[*targets, *convs],
                rank_pattern={p: adapter.conv_rank for p in patterns},
                alpha_pattern={p: adapter.conv_alpha for p in patterns},
            ),
            **glora_options(adapter),
        )
    if adapter.kind == "tlora":  # LyCORIS's T-LoRA: dbspec's own peft layer (lycoris_tlora.py)
        from dbspec.runtime.lycoris_tlora import tlora_config

        options = {"bypass": adapter.bypass, "dropout": adapter.bypass_dropout}  # LyCORIS bypass_mode
        # the convolution targets: another kind's adapter's (SD3's patch convolution), whose tlora block
        # (runtime/mixed_kinds.py kind_adapter) gives the patch its conv_rank; a T-LoRA adapter has none
        convs = adapter.conv_targets if conv and adapter.conv_rank else ()
        config = tlora_config([*targets, *convs], adapter.rank, adapter.alpha, **options)
        patterns = [re.escape(t) for t in convs]
        config.rank_pattern = {p: adapter.conv_rank for p in patterns}
        config.alpha_pattern = {p: adapter.conv_alpha for p in patterns}
        return config
    if adapter.kind == "dylora":  # DyLoRA, kohya's or LyCORIS's forward: dbspec's own peft layer (dylora.py)
        from dbspec.runtime.dylora import dylora_config

        return dylora_config(
            adapter, list(targets), list(adapter.conv_targets if conv and adapter.conv_rank else ())
        )
    if adapter.kind == "boft":  # LyCORIS's BOFT: dbspec's own peft layer (lycoris_boft.py)
        from dbspec.runtime.lycoris_boft import boft_config

        convs = adapter.conv_targets if conv else ()
        return boft_config(
            [*targets, *convs],
            adapter.oft_block_size,
            adapter.oft_constraint,
            adapter.oft_rescaled,
            adapter.bypass,
        )
    if adapter.kind == "diag-oft" and adapter.oft_form == "kohya":  # kohya's networks.oft (lycoris_oft.py)
        from dbspec.runtime.lycoris_oft import kohya_oft_config

        convs = adapter.conv_targets if conv else ()
        return kohya_oft_config([*targets, *convs], adapter.oft_blocks, adapter.oft_constraint)
    if adapter.kind == "diag-oft":  # LyCORIS's Diag-OFT: dbspec's own peft layer (lycoris_oft.py)
        from dbspec.runtime.lycoris_oft import oft_config

        convs = adapter.conv_targets if conv else ()
        return oft_config(
            [*targets, *convs],
            adapter.oft_block_size,
            adapter.oft_constraint,
            adapter.oft_rescaled,
            bypass=adapter.bypass,
        )
    conv_targets = adapter.conv_targets if conv and adapter.conv_rank else ()
    # peft matches a pattern key as a regex against the module path's tail; targets are literal names.
    patterns = [re.escape(t) for t in conv_targets]
    common = {
        "target_modules": [*targets, *conv_targets],
        "rank_pattern": {p: adapter.conv_rank for p in patterns},
        "alpha_pattern": {p: adapter.conv_alpha for p in patterns},
    }
    if adapter.kind == "lora":
        return LoraConfig(
            r=adapter.rank,
            lora_alpha=adapter.alpha,
            lora_dropout=adapter.dropout,
            use_dora=adapter.dora and not lycoris_dora(adapter),  # LyCORIS's own: lycoris_dora.py
            init_lora_weights="gaussian",
            **common,
        )
    lycoris = {
        "r": adapter.rank,
        "alpha": adapter.alpha,
        "rank_dropout": adapter.rank_dropout,
        "module_dropout": adapter.module_dropout,
        **common,
    }
    if adapter.kind == "loha":
        return LoHaConfig(use_effective_conv2d=adapter.tucker, **lycoris)
    if adapter.kind == "lokr":
        # LyCORIS's own init (the low-rank factor's second half zero, the small factor random).
        return LoKrConfig(
            decompose_factor=adapter.factor,
            decompose_both=adapter.decompose_both,
            init_weights="lycoris",
            use_effective_conv2d=adapter.tucker,
            rank_dropout_scale=adapter.rank_dropout_scale,  # peft's LoKr follows LyCORIS's flag
            **lycoris,
        )
    raise ValueError(f"adapter kind {adapter.kind!r} has no peft config")


def add_lora(
    module: torch.nn.Module,
    adapter: AdapterPlan,
    targets: tuple[str, ...],
    seed: int,
    conv: bool = False,
    component: str = "",
) -> None:
    """Attach the plan's adapter (LoRA, LoHa or LoKr); its random init is seeded so a run is reproducible.
    `conv`: the denoiser (its convolutions and blocks); else `component` names the text encoder (its
    text_encoder_blocks)."""
    blocks = adapter.blocks if conv else adapter.text_encoder_blocks if component else ()
    if any(b.kind not in ("adapter", adapter.kind) for b in blocks):
        from dbspec.runtime.mixed_kinds import add_mixed  # blocks of other kinds: one config per kind

        add_mixed(module, adapter, targets, seed, add_lora, "" if conv else component)
        _tlora_bypass(module, adapter, "" if conv else component)
        return
    from dbspec.runtime.mixed_kinds import own_bypass, set_block_bypass

    if own_bypass(adapter):  # a Diag-OFT / BOFT / DyLoRA adapter's blocks' own bypass_mode (LyCORIS map
        # entries of the network's algorithm): every layer built in the default forward (DyLoRA's several
        # blocks per layer build only there), then each given its block's, else the adapter's
        import attrs

        _add_one_kind(module, attrs.evolve(adapter, bypass=False), targets, seed, conv, component)
        set_block_bypass(module, adapter, "" if conv else component)
        return
    _add_one_kind(module, adapter, targets, seed, conv, component)
    _tlora_bypass(module, adapter, "" if conv else component)


def _tlora_bypass(module: torch.nn.Module, adapter: AdapterPlan, component: str) -> None:
    """A tlora adapter's blocks' own bypass_mode (LyCORIS map entries'): runtime/lycoris_tlora.py."""
    if adapter.kind == "tlora":
        from dbspec.runtime.lycoris_tlora import set_tlora_bypass

        set_tlora_bypass(module, adapter, component)


def _add_one_kind(
    module: torch.nn.Module,
    adapter: AdapterPlan,
    targets: tuple[str, ...],
    seed: int,
    conv: bool,
    component: str,
) -> None:
    """add_lora for an adapter whose layers are all of its own kind."""
    config = lora_config(adapter, targets, conv)
    # per-block ranks and alphas: the denoiser's [[adapter.blocks]], a text encoder's text_encoder_blocks
    if adapter.blocks if conv else (component and adapter.text_encoder_blocks):
        from dbspec.runtime.blocks import with_blocks

        config = with_blocks(config, module, adapter, "" if conv else component)
        if adapter.kind == "dylora":  # blocks' own units (LyCORIS map entries' block_size)
            from dbspec.runtime.blocks import block_units, block_zero_scales
            from dbspec.runtime.dylora import with_units

            units = block_units(module, config.target_modules, adapter, "" if conv else component)
            zeros = block_zero_scales(module, config.target_modules, adapter, "" if conv else component)
            if units or zeros:
                config = with_units(config, adapter, units, zeros)
        blocks = adapter.blocks if conv else adapter.text_encoder_blocks  # the component's
        if adapter.kind == "glora" and any(b.scalar != "adapter" for b in blocks):
            from dbspec.runtime.blocks import block_glora_scalars
            from dbspec.runtime.lycoris_glora import glora_options, with_glora

            # blocks' own use_scalar (LyCORIS map entries'): each GLoRA layer built with its block's
            own = block_glora_scalars(module, config.target_modules, adapter, "" if conv else component)
            config = with_glora(config, **glora_options(adapter), scalars=own)
        if adapter.kind == "tlora" and any(b.sig_type != "principal" or not b.data_init for b in blocks):
            from dbspec.runtime.blocks import block_random_starts, block_sig_types
            from dbspec.runtime.lycoris_tlora import with_tlora

            # blocks' own SVD starts (LyCORIS map entries' sig_type and use_data_init: a random start drawn
            # from torch's generator as peft builds the layer, under this component's seed below)
            own = block_sig_types(module, config.target_modules, adapter, "" if conv else component)
            drawn = block_random_starts(module, config.target_modules, adapter, "" if conv else component)
            config = with_tlora(
                config,
                bypass=adapter.bypass,
                dropout=adapter.bypass_dropout,
                sig_types=own,
                random_starts=drawn,
            )
        if adapter.kind in ("diag-oft", "boft") and adapter.oft_form == "lycoris":  # blocks' own rescales
            from dbspec.runtime.blocks import block_rescaled
            from dbspec.runtime.lycoris_oft import with_oft

            own = block_rescaled(module, config.target_modules, adapter, "" if conv else component)
            if own:
                layer = None
                if adapter.kind == "boft":
                    from dbspec.runtime.lycoris_boft import BoftLayer as layer
                config = with_oft(config, adapter.oft_rescaled, layer, adapter.bypass, own_rescaled=own)
    if conv and adapter.kind == "lora" and any(b.tucker != "adapter" for b in adapter.blocks):
        from dbspec.runtime.blocks import block_tuckers
        from dbspec.runtime.locon_tucker import with_tucker

        # LoCon's Tucker form on the k x k convolutions of the blocks that set it (LyCORIS map entries)
        own = block_tuckers(module, config.target_modules, adapter)
        config = with_tucker(config, own, default=adapter.tucker)
    elif conv and adapter.kind == "lora" and adapter.tucker:  # LyCORIS LoCon's Tucker form on k x k convs
        from dbspec.runtime.locon_tucker import with_tucker

        config = with_tucker(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        own_full: dict[str, bool] = {}  # LoKr layers whose block sets its own full_matrix
        # layers whose block sets its own use_scalar (paths as peft keeps them)
        # (a GLoRA layer's its own: GloraLayer's, above)
        own_scalar = (
            {}
            if adapter.kind == "glora"
            else _block_scalars(module, config, adapter, "" if conv else component, conv)
        )
        # layers whose block sets its own weight decomposition (weight_decompose; paths as peft keeps them)
        own_dora = _block_doras(module, config, adapter, "" if conv else component, conv)
        # layers whose block sets its own weight-decomposition axis (wd_on_out; paths as peft keeps them)
        own_axes = _block_dora_axes(module, config, adapter, "" if conv else component, conv)
        if adapter.kind == "lokr" and adapter.lokr_factorization == "lycoris":  # LyCORIS's Kronecker split
            own_full = _inject_lycoris_lokr(module, config, adapter, "" if conv else component, conv)
        elif conv and adapter.kind == "loha" and any(b.tucker != "adapter" for b in adapter.blocks):
            from dbspec.runtime.blocks import block_tuckers
            from dbspec.runtime.loha_weight import loha_tucker_layers

            # the Tucker form on the k x k convolutions of the blocks that set it (LyCORIS map entries)
            own = block_tuckers(module, config.target_modules, adapter, paths=True)
            with loha_tucker_layers(own):
                inject_lora(module, config)
        else:
            inject_lora(module, config)
        if adapter.kind == "loha":  # LyCORIS's Tucker gradients and rank-dropout rule on peft's LoHa layers
            from dbspec.runtime.loha_weight import use_lycoris_loha

            use_lycoris_loha(module, ADAPTER_NAME, adapter.rank_dropout_scale)
        if adapter.kind in ("loha", "lokr", "lora") and (
            conv or component
        ):  # blocks' own rank-dropout rescale
            from dbspec.runtime.blocks import block_rank_dropout_scales

            block_rank_dropout_scales(module, adapter, ADAPTER_NAME, "" if conv else component)
        if conv and adapter.fused and adapter.kind in ("lokr", "loha"):  # before the switches wrap them
            tie_fused_lycoris(module, adapter, seed)
        # a GLoRA adapter's scalar is its layers' own (lycoris_glora.py): not the LoRA / LoHa / LoKr layers'
        # another kind's pass built (runtime/mixed_kinds.py)
        scalar = adapter.scalar and adapter.kind != "glora"
        if adapter.full_matrix or scalar or own_full or own_scalar:  # LoKr full_matrix, use_scalar
            from dbspec.runtime.lycoris_switches import apply_switches

            full = adapter.kind == "lokr" and adapter.full_matrix
            apply_switches(module, full, scalar, own_full, own_scalar)
    if norm_scalars(adapter):  # LyCORIS's max norm multiplies a scalar LoCon and LoHa hold at 1 otherwise
        from dbspec.runtime.max_norm import add_norm_scalars

        add_norm_scalars(module)
    if (
        conv
        and adapter.fused
        and adapter.kind in ("lokr", "loha")
        # the adapter's scalars, or blocks' own (LyCORIS map entries' use_scalar: a block covers whole
        # fused layers, DBS507)
        and (adapter.scalar or norm_scalars(adapter) or any(b.scalar == "on" for b in adapter.blocks))
    ):
        from dbspec.runtime.fused import tie_fused_scalars  # one scalar per fused LoKr / LoHa

        tie_fused_scalars(module, adapter.fused)
    if adapter.kind == "lokr" and adapter.lokr_unit_scale:
        own: dict[str, bool] = {}  # layers whose block sets its own rs_lora (LyCORIS's map entries)
        if conv or component:
            from dbspec.runtime.blocks import block_rank_stabilized

            own = block_rank_stabilized(module, adapter, "" if conv else component)
        unit_scale_full_lokr(module, adapter.lokr_rank_stabilized, own)
    if lycoris_dora(adapter):  # DoRA peft cannot train: LyCORIS's weight decomposition on peft's layers
        from dbspec.runtime.lycoris_dora import add_lycoris_dora

        add_lycoris_dora(module, ADAPTER_NAME, adapter.dora_axis, own_dora, adapter.dora, own_axes)
        if conv and adapter.fused and adapter.kind in ("lokr", "loha", "lora") and columns(adapter):
            from dbspec.runtime.lycoris_dora import tie_fused_doras  # one column norm per fused layer

            tie_fused_doras(module, adapter.fused)
    if adapter.kind == "lokr":  # no module-dropout draw without a rate, as LokrModule (last: over the
        # classes above; a decomposed layer's forward already draws so)
        from dbspec.runtime.peft_draw import use_lycoris_lokr

        use_lycoris_lokr(module, ADAPTER_NAME)


def _block_scalars(
    module: torch.nn.Module, config: PeftConfig, adapter: AdapterPlan, component: str, conv: bool
) -> dict[str, bool]:
    """{path: use_scalar} of the layers whose block sets its own (LyCORIS's map entries)."""
    if not (conv or component):
        return {}
    from dbspec.runtime.blocks import block_scalars

    return block_scalars(module, config.target_modules, adapter, component)


def _block_doras(
    module: torch.nn.Module, config: PeftConfig, adapter: AdapterPlan, component: str, conv: bool
) -> dict[str, bool]:
    """{path: weight_decompose} of the layers whose block sets its own (LyCORIS's map entries)."""
    if not (conv or component):
        return {}
    from dbspec.runtime.blocks import block_doras

    return block_doras(module, config.target_modules, adapter, component)


def _block_dora_axes(
    module: torch.nn.Module, config: PeftConfig, adapter: AdapterPlan, component: str, conv: bool
) -> dict[str, str]:
    """{path: weight-decomposition axis} of the layers whose block sets its own (LyCORIS's map entries'
    wd_on_out)."""
    if not (conv or component):
        return {}
    from dbspec.runtime.blocks import block_dora_axes

    return block_dora_axes(module, config.target_modules, adapter, component)


def _inject_lycoris_lokr(
    module: torch.nn.Module, config: PeftConfig, adapter: AdapterPlan, component: str, conv: bool
) -> dict[str, bool]:
    """peft's LoKr layers split as LyCORIS's LokrModule splits them (lokr_factor.py), each layer with its
    block's own factor, decompose_both and tucker (LyCORIS's map entries); {path: full_matrix} of the layers
    whose block sets its own (made full after, by apply_switches)."""
    from dbspec.runtime.blocks import block_factors, block_switches
    from dbspec.runtime.lokr_factor import lycoris_factors

    factors, switches = {}, {}
    if conv or component:  # the denoiser's blocks, or a text encoder's
        factors = block_factors(module, config.target_modules, adapter, component)
        switches = block_switches(module, config.target_modules, adapter, component)
    options = {
        path: {"decompose_both": own["decompose_both"], "use_effective_conv2d": own["tucker"]}
        for path, own in switches.items()
    }
    unbalanced = {path: own["unbalanced_factorization"] for path, own in switches.items()}
    with lycoris_factors(
        adapter.unbalanced_factorization, factors, options=options, unbalanced_layers=unbalanced
    ):
        inject_lora(module, config)
    return {path: own["full_matrix"] for path, own in switches.items()}


def tie_fused_lycoris(module: torch.nn.Module, adapter, seed: int) -> int:
    """LyCORIS's LoKr / LoHa on the fused Linears of the original model (plan.adapter.fused): the parts'
    shared factors tied (runtime/fused_lokr.py, fused_loha.py); how many fused layers."""
    if adapter.kind == "loha":
        from dbspec.runtime.fused_loha import tie_fused_loha

        return tie_fused_loha(module, adapter.fused)
    from dbspec.runtime.fused_lokr import tie_fused_lokr

    return tie_fused_lokr(module, adapter.fused, adapter, seed)


def unit_scale_full_lokr(
    module: torch.nn.Module, rank_stabilized: bool = False, own: dict[str, bool] | None = None
) -> int:
    """LyCORIS's LokrModule: with both Kronecker factors full matrices (no rank inside either) the update is
    kron(w1, w2) at scale 1, its alpha replaced by the rank (rank / sqrt(rank) = sqrt(rank) with
    `rank_stabilized`, LyCORIS's rs_lora; `own`: {path: rs_lora} of the layers whose block sets its own);
    peft keeps alpha / rank there. Sets peft's scale of those layers; how many there were."""
    from peft.tuners.lokr import LoKrLayer

    full = 0
    for path, layer in module.named_modules():
        if not isinstance(layer, LoKrLayer):
            continue
        stabilized = (own or {}).get(path, rank_stabilized)
        for name in layer.scaling:
            if name in layer.lokr_w1 and name in layer.lokr_w2:
                layer.scaling[name] = full_lokr_scale(layer.r[name], stabilized)
                full += 1
    return full


def full_lokr_scale(rank: int, rank_stabilized: bool) -> float:
    """LokrModule's scale of a layer whose two Kronecker factors are full: 1, or sqrt(rank) with rs_lora,
    computed as LokrModule computes it, alpha (the rank) / sqrt(rank) (an ulp from math.sqrt(rank) at some
    ranks, which a preset's `dim = 10000000000000`, a scale of 3162277.66..., shows)."""
    return rank / math.sqrt(rank) if rank_stabilized else 1.0


def inject_lora(module: torch.nn.Module, config: PeftConfig) -> None:
    """peft wraps the targeted layers in place, marks only the adapter weights trainable and sets
    `module.peft_config`, which the exporters read."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)


@contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[None]:
    """The base model's behaviour inside the block: every peft adapter layer (LoRA, DoRA, LoHa, LoKr) runs its
    base layer alone, with no adapter dropout drawn; afterwards, exception or not, the adapters are back on
    with each weight's requires_grad as it was (peft's re-enabling would mark every adapter weight
    trainable)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from dbspec.runtime.norm_offsets import norm_layers, set_disabled  # LyCORIS train_norm's offsets off too

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    if not layers and not norm_layers(module):  # a CLIP encoder may train its norm offsets alone
        raise RuntimeError(
            "a base-model prediction needs a LoRA run or a frozen teacher copy (an adapter on the model to "
            "switch off)"
        )
    trainable = {p: p.requires_grad for layer in layers for p in layer.parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    set_disabled(module, True)
    try:
        yield
    finally:
        set_disabled(module, False)
        for layer in layers:
            layer.enable_adapters(True)
        for param, flag in trainable.items():
            param.requires_grad_(flag)


def lora_adapter(module: torch.nn.Module | None) -> tuple[torch.nn.Module, str] | None:
    """The LoRA adapter a peft-adapted module carries, as (the plain module whose names are the model's own
    paths, the adapter's name); None when it carries none. The one reader the LoRA writers (diffusers format
    in checkpoints.py, kohya format in exports.py) share."""
    from peft import PeftModel

    if module is None or not getattr(module, "peft_config", None):
        return None
    if isinstance(module, PeftModel):  # its keys carry a base_model.model. prefix the model's own paths lack
        module = module.get_base_model()
    name = ADAPTER_NAME if ADAPTER_NAME in module.peft_config else next(iter(module.peft_config))
    return module, name


# peft's names of adapter weights: LoRA (and DoRA's lora_magnitude_vector), LoHa, LoKr.
ADAPTER_WEIGHT_MARKERS = ("lora_", "hada_", "lokr_")


def is_adapter_weight(name: str) -> bool:
    return any(marker in name for marker in ADAPTER_WEIGHT_MARKERS)


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def freeze(module: torch.nn.Module) -> None:
    module.requires_grad_(False)
