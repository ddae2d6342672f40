"""lycoris.kohya `--dim_from_weights` with a LyCORIS Diag-OFT, BOFT or GLoRA file on SD 1.x/2.x
(train_network.py) and SDXL (sdxl_train_network.py). LyCORIS's create_network_from_weights (lycoris-lora
4.1.3, lycoris/kohya.py) reads no network_args: it matches each file module's name against the models'
`named_modules()` (a name no module has is skipped), picks the class whose detecting key the module holds
(lycoris/modules/__init__.py get_module, MODULE_LIST order) and builds it with that class's
make_module_from_state_dict, then train_network.py's `load_weights` loads the same file into it:

- DiagOFTModule (3-D `oft_blocks` (n, s, s)): `lora_dim = s` (its block-size hint, split as LyCORIS's
  factorization of the layer's width: blocks of min(s, width / s) rows), `constraint = float(alpha)` (a
  negative one constrains nothing, as 0: the module's `if constraint > 0`),
  `rescaled` where the module holds a `rescale`; blocks and rescale copied from the file. A module whose
  blocks are wider than they are many (s > n) is rebuilt the other way round and `copy_` raises; a module
  without `alpha` raises TypeError (float(None)).
- ButterflyOFTModule (4-D `oft_blocks` (m, n, s, s)): `lora_dim = s`, split by LyCORIS's power2factorization;
  the same alpha and rescale rules; blocks its split does not rebuild make `copy_` raise.
- GLoRAModule (`a1.weight`...): rank `a2.weight`'s rows, alpha `float(alpha)` (0: the rank), no Tucker core
  (a `bm.weight` raises AttributeError: the module never builds one), its pairs copied from the file.
- IA3Module: its make_module_from_state_dict takes one tensor and get_module hands it two (`weight`,
  `on_input`): TypeError.

dbspec's equivalent: the adapter of that kind over exactly the file's layers (the U-Net's k x k convolutions
as conv_targets, SDXL's original-layout names read onto diffusers' U-Net), its values the ones most modules
share and `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` for the modules built otherwise, started
from the file (`init_weights`, `init_partial`). The layers are looked up on torch-free inventories of kohya's
models (convert/kohya/lycoris_file.py), as LyCORIS looks them up on the models; the numbers are checked
against lycoris-lora in tests/runtime/test_lycoris_sd_rebuilt_file.py."""

from __future__ import annotations

from collections import Counter
from typing import Any

from dbspec.convert.kohya.lycoris_file import Row, _suffixes, _text_targets
from dbspec.convert.kohya.lycoris_flow_weights import LycorisModule
from dbspec.convert.kohya.lycoris_maps import _pattern
from dbspec.convert.kohya.lycoris_sd_full import INVALID, sd_layers
from dbspec.families import family_spec
from dbspec.plan.boft import power2_factorization

REBUILT = ("oft", "glora", "ia3")  # the file algos (lycoris_flow_weights._DETECT) this module maps
_GLORA = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")


def _kind(module: LycorisModule) -> str:
    """dbspec's adapter kind for the class LyCORIS's get_module builds the module as."""
    if module.algo == "oft":
        return "boft" if len(module.shapes["oft_blocks"]) == 4 else "diag-oft"
    return module.algo or "unknown"


def _oft(name: str, module: LycorisModule, kind: str) -> dict[str, Any] | str:
    """A Diag-OFT / BOFT module's (block_size, constraint, rescaled) as make_module_from_state_dict builds it;
    else why not."""
    shape = module.shapes["oft_blocks"]
    if kind == "diag-oft":
        n, s, s2 = shape
        if s != s2 or s > n:  # factorization(n s, s) gives (min(s, n), max(s, n)): (s, n, n) blocks
            return (
                f"{INVALID}`{name}.oft_blocks` is {list(shape)}: DiagOFTModule rebuilt with lora_dim={s} "
                f"splits the layer into {max(s, n)} blocks of {min(s, n)} rows, and its copy_ raises"
            )
    else:
        m, n, s, s2 = shape
        split = power2_factorization(n * s, s)
        stages = bin(n - 1).count("1") + 1 if n else 0
        if s != s2 or split != (s, n) or m != stages:
            return (
                f"{INVALID}`{name}.oft_blocks` is {list(shape)}: ButterflyOFTModule rebuilt with "
                f"lora_dim={s} splits the layer's {n * s} rows as {split} (blocks, count), and its "
                "copy_ raises"
            )
    if module.alpha is None:
        return (
            f"{INVALID}`{name}` has no alpha: make_module_from_state_dict builds it with constraint = "
            "float(alpha), TypeError"
        )
    # a negative alpha: DiagOFTModule / ButterflyOFTModule scale their blocks only `if constraint > 0`, so it
    # constrains nothing, as 0 (the module saves it back as its alpha; dbspec's export saves 0, which LyCORIS
    # loads to the same unconstrained module)
    constraint = max(float(module.alpha), 0.0)
    return {"block_size": s, "constraint": constraint, "rescaled": "rescale" in module.shapes}


def _glora(name: str, module: LycorisModule, layer: str) -> dict[str, Any] | str:
    """A GLoRA module's (rank, alpha) as make_module_from_state_dict builds it; else why not."""
    missing = [t for t in _GLORA if t not in module.shapes]
    if missing:
        return f"{INVALID}`{name}` has no `{missing[0]}`: GLoRAModule's make_module_from_state_dict fails"
    if "bm.weight" in module.shapes:
        return (
            f"{INVALID}`{name}.bm.weight`: GLoRAModule builds no Tucker core (make_module_from_state_dict "
            "copies into module.bm: AttributeError)"
        )
    dims = 2 if layer == "linear" else 4
    odd = next((t for t in _GLORA if len(module.shapes[t]) != dims), None)
    if odd is not None:
        return (
            f"{INVALID}`{name}.{odd}` has {len(module.shapes[odd])} dimensions; the layer is a "
            f"{'Linear' if layer == 'linear' else 'convolution'}: GLoRAModule's copy_ raises"
        )
    rank = module.shapes["a2.weight"][0]
    if module.alpha is None:
        return (
            f"{INVALID}`{name}` has no alpha: make_module_from_state_dict builds it with float(alpha), "
            "TypeError"
        )
    # GLoRAModule: alpha 0 is the rank; a negative one keeps its sign (scale alpha / rank, saved signed), as
    # the plan's glora layers do (tests/runtime/test_lycoris_sd_rebuilt_file_signs.py)
    return {"rank": rank, "alpha": float(module.alpha or rank)}


def _common(values: list[tuple]) -> tuple | None:
    """The most frequent value (the first seen among equals)."""
    return Counter(values).most_common(1)[0][0] if values else None


def _oft_blocks(found: dict[str, dict], rows: list[Row], top: dict[str, Any]) -> list[dict[str, Any]]:
    """OftBlock tables for the layers built otherwise than `top` (one per distinct set of values)."""
    built = [row for row in rows if row[0] in found]
    groups: dict[tuple, set[str]] = {}
    for path, values in found.items():
        key = (values["block_size"], values["constraint"], values["rescaled"])
        if key != (top["block_size"], top["constraint"], top["rescaled"]):
            groups.setdefault(key, set()).add(path)
    out = []
    for (size, constraint, rescaled), paths in groups.items():
        block: dict[str, Any] = {"pattern": _pattern(paths, built), "block_size": size}
        if constraint != top["constraint"]:
            block["constraint"] = constraint
        if rescaled != top["rescaled"]:
            block["rescaled"] = "on" if rescaled else "off"
        out.append(block)
    return out


def _glora_blocks(found: dict[str, dict], rows: list[Row], top: dict[str, Any]) -> list[dict[str, Any]]:
    """GloraBlock (TextEncoderBlock for `text`) tables for the layers at another rank or alpha."""
    built = [row for row in rows if row[0] in found]
    groups: dict[tuple, set[str]] = {}
    for path, values in found.items():
        conv = values["layer"] == "conv"
        pair = (values["rank"], values["alpha"])
        if pair != ((top["conv_rank"], top["conv_alpha"]) if conv else (top["rank"], top["alpha"])):
            groups.setdefault((conv, *pair), set()).add(path)
    out = []
    for (conv, rank, alpha), paths in groups.items():
        block: dict[str, Any] = {"pattern": _pattern(paths, built)}
        if conv:
            block.update(rank=top["rank"], alpha=top["alpha"], conv_rank=rank, conv_alpha=alpha)
        else:
            block.update(rank=rank, alpha=alpha)
        out.append(block)
    return out


def sd_rebuilt_file(
    modules: dict[str, LycorisModule], family: str, unet_only: bool
) -> dict[str, object] | str:
    """[adapter] values (blocks and text_encoder_blocks as lists of tables) for the network
    create_network_from_weights builds from a Diag-OFT, BOFT or GLoRA file on `family` (SD 1.x/2.x or
    SDXL); else why not ("invalid:..." where kohya fails, DBS402; otherwise DBS403)."""
    layers = sd_layers(family)
    unknown = layers.unknown(modules)
    if unknown:
        return unknown
    ia3 = next((n for n, m in sorted(modules.items()) if m.algo == "ia3"), None)
    if ia3 is not None:
        return (
            f"{INVALID}`{ia3}` is an IA3 module: IA3Module.make_module_from_state_dict takes one tensor and "
            "get_module hands it two (`weight`, `on_input`): TypeError"
        )
    bare = next((n for n, m in sorted(modules.items()) if not m.algo), None)
    if bare is not None:
        return (
            f"{INVALID}`{bare}` holds no tensor LyCORIS's get_module knows: make_module is handed no class "
            "(AttributeError)"
        )
    kinds = sorted({_kind(m) for m in modules.values()})
    if len(kinds) != 1:
        first = next(n for n, m in sorted(modules.items()) if _kind(m) == kinds[-1])
        return (
            f"module `{first}` is a LyCORIS {kinds[-1]} module beside {kinds[0]} ones; dbspec rebuilds one "
            "kind from a --dim_from_weights file"
        )
    (kind,) = kinds
    unet: dict[str, dict] = {}  # diffusers path -> the module's values (and its layer kind)
    text: dict[str, dict] = {}  # <component>.<path> -> the same
    built_texts: list[list[str]] = [[] for _ in layers.texts]
    for name, module in sorted(modules.items()):
        slot, (path, cls, layer) = layers.lookup(name)
        if not layer:
            return (
                f"{INVALID}module `{name}` is kohya's {cls} `{path}`, which LyCORIS's {kind} module does not "
                "take (Linear and convolution layers only): ValueError"
            )
        values = _glora(name, module, layer) if kind == "glora" else _oft(name, module, kind)
        if isinstance(values, str):
            return values
        values["layer"] = layer
        if slot is None:
            unet[layers.unet_path(path)] = values
        elif not unet_only:  # apply_to drops the text-encoder modules with --network_train_unet_only
            built_texts[slot].append(path)
            text[f"{layers.components[slot]}.{path}"] = values
    if not unet:
        return "it holds no module of the U-Net"
    rows, text_rows = layers.rows, layers.text_rows
    targets, targets_2 = _text_targets(layers.texts, built_texts)
    out: dict[str, object] = {
        "kind": kind,
        "denoiser_targets": _suffixes({p for p, v in unet.items() if v["layer"] != "conv"}, rows),
        "conv_targets": _suffixes({p for p, v in unet.items() if v["layer"] == "conv"}, rows),
        "text_encoder_targets": targets,
    }
    if targets_2 is not None:
        out["text_encoder_2_targets"] = targets_2
    every = [*unet.values(), *text.values()]
    if kind == "glora":
        pointwise = [(v["rank"], v["alpha"]) for v in every if v["layer"] != "conv"]
        convs = [(v["rank"], v["alpha"]) for v in every if v["layer"] == "conv"]
        rank, alpha = _common(pointwise) or _common(convs)
        conv_rank, conv_alpha = _common(convs) or (0, 0.0)
        top = {"rank": rank, "alpha": alpha, "conv_rank": conv_rank, "conv_alpha": conv_alpha}
        out.update(top if conv_rank else {"rank": rank, "alpha": alpha})
        out["blocks"] = _glora_blocks(unet, rows, top)
        out["text_encoder_blocks"] = _glora_blocks(text, text_rows, top)
    else:
        block_size, constraint, rescaled = _common(
            [(v["block_size"], v["constraint"], v["rescaled"]) for v in every]
        )
        top = {"block_size": block_size, "constraint": constraint, "rescaled": rescaled}
        out.update(top)
        out["blocks"] = _oft_blocks(unet, rows, top)
        out["text_encoder_blocks"] = _oft_blocks(text, text_rows, top)
    return out


def sd_file_norms(modules: dict[str, LycorisModule], family: str, unet_only: bool) -> dict[str, object] | str:
    """[adapter] denoiser_norms / text_encoder_norms (text_encoder_2_norms) for the file's NormModules
    (`w_norm` / `b_norm`, what a train_norm run saves): create_network_from_weights builds a NormModule on
    each norm of kohya's models the file names (make_module_from_state_dict: its offsets copied from the
    file), whatever the other modules; {} when the file has none; else why not ("invalid:..." where kohya
    fails). apply_to drops the text encoders' with --network_train_unet_only."""
    from dbspec.convert.kohya.lycoris_file import norm_targets

    norms = {n: m for n, m in modules.items() if m.algo == "norm"}
    if not norms:
        return {}
    facts = family_spec(family).kohya
    layers = sd_layers(family)
    unet: list[str] = []
    text: list[list[str]] = [[] for _ in layers.texts]
    for name in sorted(norms):
        if layers.unknown([name]):
            return (
                f"norm module `{name}` names no layer of kohya's {layers.title} models: LyCORIS "
                "skips it, so the file is likely another model's; dbspec starts only from a file whose every "
                "module is a layer of the run"
            )
        slot, (path, cls, _) = layers.lookup(name)
        if "Norm" not in cls:
            return (
                f"{INVALID}`{name}.w_norm`: kohya's `{path}` is a {cls}, not a LayerNorm or GroupNorm; "
                "NormModule does not take it and its make_module_from_state_dict fails (AttributeError)"
            )
        if slot is None:
            unet.append(path)
        elif not unet_only:
            text[slot].append(path)
    targets = norm_targets(unet, text, facts.v2, layers.sdxl)
    out: dict[str, object] = {}
    if unet:
        out["denoiser_norms"] = targets.denoiser
    if any(text):
        out["text_encoder_norms"] = targets.text_encoder
        if targets.text_encoder_2 is not None:
            out["text_encoder_2_norms"] = targets.text_encoder_2
    return out
