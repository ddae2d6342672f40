"""Several adapter kinds on one model: `[[adapter.blocks]]` (`[[adapter.text_encoder_blocks]]`) whose `kind`
is not the adapter's (a LyCORIS preset file's `module_algo_map` / `name_algo_map` entries with another
`algo`, e.g. LoKr on the attention and LoCon on the ResNets).

Each kind's layers are injected through a peft config of their own, on disjoint modules, under the one adapter
name (`adapters.ADAPTER_NAME`): every per-layer reader (exports, resume, adapters_disabled, the optimizer's
groups) tells the kinds apart by the layer's class, as it does for one kind. `module.peft_config` keeps the
adapter's own kind's config (what the diffusers / peft writers read); the other kinds' configs ride in
`module.dbspec_kind_configs`, which `weights.save_peft_adapters` writes as `<component>/<kind>/` folders
beside the adapter's own. The compiler (DBS578) admits only the options every kind builds alike.

Besides LoRA, LoHa and LoKr, a block may give its layers LyCORIS's full, IA^3, Diag-OFT, BOFT, GLoRA or
DyLoRA on the U-Net families (their own peft layers, LoraConfigs whose keys runtime/weights.py tells apart;
DyLoRA's layers in LyCORIS's forward, each in blocks of its block's `unit`, drawing their block before each
micro-batch as a DyLoRA adapter's do: draws_blocks). On Flux
and SD3 (plan.adapter.fused) each kind's fused Linears are tied as that kind ties them: LoKr / LoHa in
add_lora (runtime/fused_lokr.py, fused_loha.py), LoRA's shared downs in runtime/prepare.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import torch

from dbspec.plan.model import BYPASS_KINDS, AdapterPlan

KIND_CONFIGS = "dbspec_kind_configs"  # the module attribute: {kind: peft config} of the other kinds


def mixed(adapter: AdapterPlan) -> bool:
    """Some block (the denoiser's or a text encoder's) gives its layers another kind than the adapter's."""
    return any(b.kind != "adapter" for b in (*adapter.blocks, *adapter.text_encoder_blocks))


def draws_blocks(adapter: AdapterPlan) -> bool:
    """DyLoRA layers train in the run (runtime/dylora.py draw_blocks before each micro-batch): a DyLoRA
    adapter's, or blocks of kind "dylora" beside another kind's."""
    blocks = (*adapter.blocks, *adapter.text_encoder_blocks)
    return adapter.kind == "dylora" or any(b.kind == "dylora" and (b.rank or b.conv_rank) for b in blocks)


def other_kinds(adapter: AdapterPlan, component: str = "") -> tuple[str, ...]:
    """The kinds the adapter's blocks (a text encoder's, `component` named) give some layers in place of its
    own, in the blocks' order."""
    found: list[str] = []
    for block in adapter.text_encoder_blocks if component else adapter.blocks:
        if block.kind not in ("adapter", adapter.kind) and block.kind not in found:
            found.append(block.kind)
    return tuple(found)


def kind_adapter(adapter: AdapterPlan, kind: str, component: str = "") -> AdapterPlan:
    """The adapter as `kind`'s layers train: the blocks of that kind at their rank, every other block (and,
    for another kind than the adapter's, every module no block matches) at rank 0, so peft leaves them to
    the other kinds' configs. LoKr's layers split as LyCORIS's LokrModule splits them, full ones at scale 1
    (what the compiler plans for kind lokr)."""
    own = kind == adapter.kind
    table = "text_encoder_blocks" if component else "blocks"
    # this kind's blocks with layers (the adapter's own kind's: its blocks of kind "adapter" too)
    mine = [b for b in getattr(adapter, table) if block_kind(adapter, b) == kind and (b.rank or b.conv_rank)]
    # the other kinds' blocks at rank 0 and never decomposed here: each kind's pass gives LyCORIS's weight
    # decomposition (runtime/lycoris_dora.py add_lycoris_dora, over every adapted layer so far) to its own
    # layers alone, each as its block's `dora` / `dora_axis` say (a map entry's weight_decompose / wd_on_out)
    off = {"rank": 0, "conv_rank": 0, "dora": "off", "dora_axis": "adapter"}
    # nor do they carry their own LoKr split, switches or scalar into this kind's pass (their layers are
    # the other kinds', each pass reading its own blocks': adapters.add_lora's block_factors, block_scalars)
    off.update(
        factor=0,
        scalar="adapter",
        rank_stabilized="adapter",
        **dict.fromkeys(("decompose_both", "full_matrix", "tucker", "unbalanced_factorization"), "adapter"),
    )
    blocks = tuple(
        attrs.evolve(b, kind="adapter", **({} if own else _settled_scalar(adapter, kind, b)))
        if (b.kind == "adapter" and own) or b.kind == kind
        else attrs.evolve(b, kind="adapter", **off)
        for b in getattr(adapter, table)
    )
    if not own:  # the modules no block matches are the adapter's kind's
        blocks += (attrs.evolve(blocks[0], pattern="", **off),)
    if kind == "ia3":  # IA^3's peft rank marks its side (lycoris_ia3.INPUT_SIDE_RANK): 1, the output's
        blocks = tuple(attrs.evolve(b, rank=min(b.rank, 1), conv_rank=min(b.conv_rank, 1)) for b in blocks)
    extra = {"lokr_factorization": "lycoris", "lokr_unit_scale": True} if kind == "lokr" else {}
    if kind not in ("lora", "loha", "lokr"):  # LyCORIS's other modules take no weight_decompose (dora_wd)
        extra["dora"] = False
    if kind == "dylora" and not own:  # LyCORIS's DyLoraModule, each layer in blocks of its block's unit
        extra = {"dylora_form": "lycoris", "dylora_unit": 1}
    if not own:
        extra["scalar"] = _pass_scalar(adapter, kind)
    if not own and adapter.kind in ("full", "ia3"):  # no size of their own: every layer (its convolutions
        # among conv_targets) at its block's, the catch-all block above at rank 0
        extra.update(rank=1, alpha=1.0, conv_rank=1, conv_alpha=1.0)
    if not own and adapter.kind == "tlora" and adapter.conv_targets:  # its blocks of other kinds' k x k
        # convolutions (the T-LoRA layers take none: its conv_rank 0), each at its block's, the catch-all 0
        extra.update(conv_rank=1, conv_alpha=1.0)
    # the kind's layers built in its blocks' bypass_mode: when they differ, in the default forward,
    # set_block_bypass then giving each layer its block's (DyLoRA's several blocks per layer build only
    # there); the adapter's own kind's, its own blocks' and the adapter's
    extra["bypass"] = all(block_bypass(adapter, b) for b in mine) and (adapter.bypass or not own)
    if kind in ("glora", "tlora") and not own:  # LyCORIS's one network dropout: GLoRAModule's pairs' and
        # TLoraModule's update dropped in their bypass forward as the adapter's LoCon / LoHa / LoKr layers'
        # (its output_dropout; a glora / tlora adapter's own bypass_dropout; compiler
        # rules.mixed_output_dropout, host_bypass_inert)
        extra["bypass_dropout"] = adapter.bypass_dropout or adapter.output_dropout
    return attrs.evolve(adapter, kind=kind, **{table: blocks}, **extra)


# the kinds whose LyCORIS module reads the network's use_scalar (LoConModule, LohaModule, LokrModule; also
# GLoRAModule, whose layers take the adapter's, else their block's own: GloraLayer per layer)
_SCALAR_KINDS = ("lora", "loha", "lokr")


def _settled_scalar(adapter: AdapterPlan, kind: str, block) -> dict:
    """A block of `kind`'s layers in their own pass (not the adapter's kind): its scalar settled "on" /
    "off" where it inherits the adapter's (`scalar` in a run of several kinds is every LoRA / LoHa / LoKr
    layer's, as LyCORIS hands the network's use_scalar to every module), so the pass's adapter can leave
    its scalar off: runtime/lycoris_switches.py add_scalars then touches this pass's layers alone."""
    if kind not in _SCALAR_KINDS or block.scalar != "adapter":
        return {}
    return {"scalar": "on" if adapter.scalar else "off"}


def _pass_scalar(adapter: AdapterPlan, kind: str) -> bool:
    """The use_scalar another kind's pass builds with: off for LoRA / LoHa / LoKr (the adapter's reaches
    their layers through their blocks, _settled_scalar, not the layers earlier passes built); GLoRA's layers
    the adapter's, each block of its own over it (adapters.add_lora: block_glora_scalars)."""
    return adapter.scalar if kind == "glora" else False


def block_bypass(adapter: AdapterPlan, block) -> bool:
    """The block's settled bypass_mode (None in plan files written before it: the adapter's)."""
    return adapter.bypass if block.bypass is None else block.bypass


def block_kind(adapter: AdapterPlan, block) -> str:
    """The kind of the layers a block (None: no block matched) gives: its own, else the adapter's."""
    return adapter.kind if block is None or block.kind == "adapter" else block.kind


def own_bypass(adapter: AdapterPlan) -> bool:
    """Some block of Diag-OFT / BOFT / DyLoRA / IA^3 layers (a block of that kind, or a Diag-OFT / BOFT /
    DyLoRA adapter's own) has a settled bypass_mode (plan BlockPlan.bypass: a LyCORIS map entry's own) other
    than the adapter's."""
    return any(
        block_kind(adapter, b) in BYPASS_KINDS and block_bypass(adapter, b) != adapter.bypass
        for b in (*adapter.blocks, *adapter.text_encoder_blocks)
        if b.rank or b.conv_rank
    )


def set_block_bypass(module: torch.nn.Module, adapter: AdapterPlan, component: str = "") -> int:
    """Each Diag-OFT, BOFT, IA^3 and DyLoRA layer of `module` (the denoiser; a text encoder, `component`
    named) in the bypass_mode of its block (the first whose pattern matches it, as it chose the layer's kind:
    runtime/blocks.py; a Diag-OFT / BOFT / DyLoRA adapter's own blocks too), else the adapter's, where some
    block's differs from the adapter's (own_bypass): LyCORIS's create_single_module hands a map entry's own
    bypass_mode to its modules over the network's, whichever their algorithm (adapters.add_lora and
    weights.load_peft_adapters build every layer in the default forward first). How many layers run the
    bypass forward."""
    from dbspec.runtime.blocks import block_of
    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.exports import clip_path
    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.lycoris_oft import DiagOftLayer

    if not own_bypass(adapter):
        return 0
    blocks = adapter.text_encoder_blocks if component else adapter.blocks
    text_path = (lambda p: p) if type(module).__name__.startswith("T5") else clip_path
    count = 0
    for path, layer in module.named_modules():
        if not isinstance(layer, (DiagOftLayer, Ia3Layer, DyloraLayer)):
            continue
        block = block_of(blocks, f"{component}.{text_path(path)}" if component else path)
        if block_kind(adapter, block) not in BYPASS_KINDS:
            continue
        bypass = adapter.bypass if block is None else block_bypass(adapter, block)
        if isinstance(layer, DyloraLayer):
            if bypass and any(r != layer.unit for r in layer.r.values()):
                raise ValueError(f"DyLoRA bypass at {path}: LyCORIS runs it with one block per layer")
            layer.dylora_bypass = bypass
        elif isinstance(layer, Ia3Layer):
            layer.ia3_bypass = bypass
        else:
            layer.oft_bypass = bypass
        count += bypass
    return count


def add_mixed(
    module: torch.nn.Module,
    adapter: AdapterPlan,
    targets: tuple[str, ...],
    seed: int,
    add_lora,
    component: str = "",
) -> None:
    """Each kind's layers on the denoiser (a text encoder, `component` named) through `add_lora`
    (adapters.add_lora, passed in: adapters imports this module), the adapter's kind first, each kind's init
    seeded on its own; a kind no layer takes is skipped (BlocksError when none takes any)."""
    from dbspec.runtime.blocks import BlocksError

    configs: dict[str, object] = {}
    error: BlocksError | None = None
    for i, kind in enumerate((adapter.kind, *other_kinds(adapter, component))):
        # peft's injection marks only its own kind's weights trainable: the kinds before keep theirs (after
        # the first injection only adapter weights train; before it the base's may)
        trained = [p for p in module.parameters() if p.requires_grad] if configs else []
        try:
            sub = kind_adapter(adapter, kind, component)
            add_lora(module, sub, targets, seed + i, conv=not component, component=component)
        except BlocksError as exc:
            error = exc
            continue
        for param in trained:
            param.requires_grad_(True)
        configs[kind] = module.peft_config.pop("default")
        del module.peft_config  # the next kind's injection starts its own
    if not configs and error is not None:
        raise error
    first = adapter.kind if adapter.kind in configs else next(iter(configs))
    module.peft_config = {"default": configs.pop(first)}
    setattr(module, KIND_CONFIGS, configs)
    set_block_bypass(module, adapter, component)  # blocks' own bypass_mode (LyCORIS map entries')


@contextmanager
def config_as(module: torch.nn.Module, config) -> Iterator[None]:
    """`module.peft_config` is {"default": config}, and the module carries no other kind, inside the block
    (peft's state-dict readers and writers pick the keys of the config's kind)."""
    saved, others = module.peft_config, getattr(module, KIND_CONFIGS, {})
    module.peft_config = {"default": config}
    setattr(module, KIND_CONFIGS, {})
    try:
        yield
    finally:
        module.peft_config = saved
        setattr(module, KIND_CONFIGS, others)


def add_module_dropout(module: torch.nn.Module, adapter: AdapterPlan, fused: tuple = ()) -> int:
    """The network's `module_dropout` in a run of several kinds (LyCORIS hands it every module): each
    layer draws as its own LyCORIS class does, one `torch.rand(1)` from torch's global CPU generator per
    training forward, the layer's base output alone below the rate (LoConModule, LohaModule, LokrModule,
    FullModule, IA3Module, DiagOFTModule, ButterflyOFTModule, GLoRAModule and DyLoraModule.forward in
    lycoris-lora 4.1.3 alike), in the model's forward order. LoHa / LoKr (peft's own draw), GLoRA and DyLoRA
    layers draw in their own forward already (their kind's config carries the rate), a lora adapter's LoRA
    layers through lora_dropout.py (runtime/prepare.py); here a LoHa / LoKr / DyLoRA adapter's LoRA blocks
    (lora_dropout.py; a LoHa adapter's with LoConModule's row mask too, rank_dropout_form "lycoris") and the
    full / IA^3 / Diag-OFT / BOFT layers, which have no module dropout of their
    own. On the denoiser's fused Linears (`fused`, plan.adapter.fused: Flux, SD3, Chroma) each kind's one
    LyCORIS module on the fused layer draws once per forward for all its parts: the first part called draws,
    the others take its outcome (runtime/dylora.py FusedSkip, as a fused DyLoRA's parts share theirs, a
    fused GLoRA's their draws in its forward, runtime/lycoris_glora.py FusedDraws;
    runtime/fused_dropout.py for LoRA parts, fused_lycoris_dropout.py for LoKr / LoHa parts of a lora or
    dylora adapter's blocks; a LoKr / LoHa adapter's are wrapped by runtime/prepare.py). Returns how many
    layers (fused layers) this wrapped."""
    rate = adapter.module_dropout
    count = 0
    kinds = set(other_kinds(adapter))
    # a LoCon / LoHa layer's rank dropout beside other kinds (compiler rules.lycoris_row_masks: LoHa blocks
    # always LohaModule's row mask; the adapter's LoCon blocks with the plan's rank_dropout_form "lycoris")
    # (a LoHa adapter's LoCon blocks in bypass_mode LoConModule's rank mask, "lycoris_bypass")
    rows = adapter.rank_dropout if adapter.rank_dropout_form in ("lycoris", "lycoris_bypass") else 0.0
    if fused and adapter.kind not in ("lokr", "loha") and kinds & {"lokr", "loha"}:
        from dbspec.runtime.fused_lycoris_dropout import add_fused_lycoris_dropout

        # the LoHa blocks' fused parts: LohaModule's one row mask over the fused update (LoKr blocks take
        # none: the compiler refuses rank_dropout beside them, LokrModule's CPU mask stops kohya, DBS402, but
        # in bypass_mode, where LokrModule never reads it: rules.mixed_bypass_ranks)
        # output: LohaModule's / LokrModule's bypass dropout, one mask over the fused output
        rates = (rate, adapter.rank_dropout, adapter.rank_dropout_scale, adapter.output_dropout)
        count += add_fused_lycoris_dropout(module, fused, *rates, lokr_rows=False)
    if adapter.kind != "lora":
        from dbspec.runtime.lora_dropout import add_lora_dropout

        if fused and "lora" in kinds:  # the LoRA blocks' fused parts: one draw per fused layer, one
            from dbspec.runtime.fused_dropout import add_fused_dropout  # LoConModule row mask over its rows

            form, output = adapter.rank_dropout_form, adapter.output_dropout  # LoConModule's bypass one
            count += add_fused_dropout(module, fused, rows, rate, form=form, output_dropout=output)
        # a LoHa adapter's LoCon blocks draw LoConModule's row mask after its module dropout draw (the plan's
        # rank_dropout_form "lycoris"; decomposed ones in runtime/lycoris_dora.py); others none
        # output: LoConModule's bypass dropout of its update
        form, output = adapter.rank_dropout_form, adapter.output_dropout
        count += add_lora_dropout(module, rows, rate, form=form, output_dropout=output)

    return count + (add_own_module_dropout(module, rate, fused) if rate else 0)


def add_kinds_rank_dropout(module: torch.nn.Module, rate: float, fused: tuple = (), swapped=None) -> int:
    """The network's `rank_dropout` on the full and Diag-OFT blocks' layers of a LoRA / LoHa adapter
    (LyCORIS hands it every module; compiler rules.lycoris_row_masks): FullModule's row mask over its copy's
    update (runtime/lycoris_full.py), DiagOFTModule's dropout of its rotations in its default forward
    (runtime/lycoris_oft.py), each layer its own draw in its forward, after its module dropout's. IA^3, BOFT,
    DyLoRA and GLoRA layers outside bypass_mode draw none (their LyCORIS classes never read it), the LoRA /
    LoHa layers their own row masks (runtime/lora_dropout.py, loha_weight.py). On the denoiser's fused
    Linears (`fused`, plan.adapter.fused: Flux, SD3, Chroma) each kind's one LyCORIS module on the fused layer
    draws one mask its parts share: FullModule's over every part's rows (`swapped`: kohya's halves of rows
    the other way round, runtime/prepare.py swapped_rows), DiagOFTModule's over its blocks (fit_fused_oft
    links the parts). How many layers draw."""
    from dbspec.runtime.adapters import ADAPTER_NAME
    from dbspec.runtime.lycoris_full import add_full_rank_dropout
    from dbspec.runtime.lycoris_oft import add_oft_rank_dropout

    return add_full_rank_dropout(module, rate, fused, swapped) + add_oft_rank_dropout(
        module, rate, ADAPTER_NAME
    )


def add_own_module_dropout(module: torch.nn.Module, rate: float, fused: tuple = ()) -> int:
    """LyCORIS's module dropout on `module`'s full / IA^3 / Diag-OFT / BOFT / T-LoRA layers, which have none
    of their own (FullModule, IA3Module, DiagOFTModule, ButterflyOFTModule, TLoraModule.forward: one
    `torch.rand(1)` from torch's global CPU generator per training forward, first, the base output alone below
    the rate): each layer its own draw, a fused Linear's parts (`fused`) one they share (runtime/fused.py
    FusedSkip). Also a Diag-OFT adapter's own `module_dropout` (runtime/prepare.py). How many layers (fused
    layers) draw."""
    from dbspec.runtime.adapters import ADAPTER_NAME
    from dbspec.runtime.fused import FusedSkip, fused_parts
    from dbspec.runtime.lycoris_full import FullLayer
    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.lycoris_oft import DiagOftLayer
    from dbspec.runtime.lycoris_tlora import TloraLayer

    def own(layer) -> bool:
        return isinstance(layer, (FullLayer, Ia3Layer, DiagOftLayer, TloraLayer)) and ADAPTER_NAME in getattr(
            layer, layer._holds
        )

    count = 0
    for _group, _index, found in fused_parts(module, fused, own):
        if len(found) > 1:  # one LyCORIS module on the fused layer: one draw its parts share
            skip = FusedSkip(len(found))
            for _, _, layer in found:
                layer.forward = _skipping(layer, layer.forward, rate, skip)
            count += 1
    for layer in module.modules():
        if own(layer) and not hasattr(layer, "dbspec_skip"):
            layer.forward = _skipping(layer, layer.forward, rate, FusedSkip(1))
            count += 1
    return count


def _skipping(layer, own, rate: float, skip):
    """`own` (the layer's forward) after LyCORIS's module dropout draw, `skip` (runtime/dylora.py FusedSkip:
    the layer's own, or the one its fused layer's parts share)."""
    from dbspec.runtime.adapters import ADAPTER_NAME

    layer.dbspec_skip = skip

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        active = not layer.disable_adapters and not layer.merged and ADAPTER_NAME in layer.active_adapters
        if layer.training and active and skip.take(rate):
            kwargs.pop("alora_offsets", None)
            return layer.base_layer(x, *args, **kwargs)  # the module's org_forward
        return own(x, *args, **kwargs)

    return forward
