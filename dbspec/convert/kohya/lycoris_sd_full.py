"""lycoris.kohya `--dim_from_weights` with a LyCORIS full file (`diff` / `diff_b`, what algo=full saves) on SD
1.x/2.x (train_network.py) and SDXL (sdxl_train_network.py). LyCORIS's create_network_from_weights reads no
network_args: it matches each file module's name against the models' `named_modules()` (kohya's name:
`lora_unet_` / `lora_te_` (SDXL `lora_te1_` / `lora_te2_`) and the path with `.` written `_`; a name no module
has is skipped), builds a FullModule from its `diff` / `diff_b` (make_module_from_state_dict: the module's
weight is the diff), and `apply_to` adds the layer's weight and bias (W + diff); train_network.py's
`load_weights` then loads the same file, and FullModule's load hook adds the diff again: each layer starts at
W + 2 diff (lycoris-lora 4.1.3; tests/runtime/test_lycoris_sd_full_file.py checks it against lycoris-lora's
network). dbspec's equivalent: kind full over exactly the file's layers (the U-Net's 3x3 convolutions as
conv_targets, SDXL's original-layout names read onto diffusers' U-Net by dbspec.unet_layout), started from the
file with init_scale 2. The layers are looked up on torch-free inventories of kohya's models
(convert/kohya/lycoris_file.py), as LyCORIS looks them up on the models."""

from __future__ import annotations

from typing import NamedTuple

from dbspec.convert.kohya.lycoris_file import Row, _suffixes, _text_targets, clip_text, sd_unet, sdxl_unet
from dbspec.convert.kohya.lycoris_flow_weights import LycorisModule
from dbspec.families import family_spec
from dbspec.unet_layout import SDXL_UNET, diffusers_name

INVALID = "invalid:"  # kohya itself fails (DBS402); other messages: dbspec cannot express it (DBS403)


def _index(prefix: str, rows: list[Row]) -> dict[str, Row]:
    """kohya's module name -> its inventory row (create_network_from_weights' lookup)."""
    return {f"{prefix}_{path}".replace(".", "_"): (path, cls, kind) for path, cls, kind in rows if path}


class SdLayers(NamedTuple):
    """The layers of kohya's SD 1.x/2.x or SDXL models, as create_network_from_weights looks a file's module
    names up on them: the U-Net's and each text encoder's inventory rows (convert/kohya/lycoris_file.py) by
    kohya's module name, and the adaptable rows under dbspec's paths (SDXL's original layout read onto
    diffusers' U-Net; the text encoders' as `<component>.<path>`)."""

    title: str
    sdxl: bool
    texts: list[list[Row]]  # each text encoder's inventory
    components: list[str]  # text_encoder, text_encoder_2
    unet_index: dict[str, Row]
    text_index: list[dict[str, Row]]
    rows: list[Row]  # the U-Net's Linear / convolution rows under dbspec's paths
    text_rows: list[Row]

    def unknown(self, modules) -> str | None:
        """Why a file naming layers these models lack is not started from; None when it names none."""
        found = sorted(
            n for n in modules if n not in self.unet_index and not any(n in i for i in self.text_index)
        )
        if not found:
            return None
        return (
            f"module `{found[0]}` names no layer of kohya's {self.title} models ({len(found)} such): LyCORIS "
            "skips it, so the file is likely another model's; dbspec starts only from a file whose every "
            "module is a layer of the run"
        )

    def lookup(self, name: str) -> tuple[int | None, Row]:
        """(None for the U-Net, else the text encoder's index; its inventory row) of a known module name."""
        found = self.unet_index.get(name)
        if found is not None:
            return None, found
        slot = next(i for i, index in enumerate(self.text_index) if name in index)
        return slot, self.text_index[slot][name]

    def unet_path(self, path: str) -> str:
        """dbspec's (diffusers') path of a U-Net inventory path."""
        return diffusers_name(path, SDXL_UNET, ".") if self.sdxl else path


def sd_layers(family: str) -> SdLayers:
    """The layers of kohya's models of `family` (SD 1.x/2.x or SDXL)."""
    facts = family_spec(family).kohya
    sdxl = facts.original_unet_names  # kohya's SDXL U-Net (the original layout) and its two CLIP encoders
    unet_rows = sdxl_unet() if sdxl else sd_unet(facts.v2)
    texts = [clip_text(12), clip_text(32, projection=True)] if sdxl else [clip_text(23 if facts.v2 else 12)]
    components = ["text_encoder", "text_encoder_2"][: len(texts)]
    text_prefixes = ["lora_te1", "lora_te2"] if sdxl else ["lora_te"]
    return SdLayers(
        title=family_spec(family).title,
        sdxl=sdxl,
        texts=texts,
        components=components,
        unet_index=_index("lora_unet", unet_rows),
        text_index=[_index(p, rows) for p, rows in zip(text_prefixes, texts)],
        rows=[(diffusers_name(p, SDXL_UNET, ".") if sdxl else p, c, k) for p, c, k in unet_rows if k],
        text_rows=[(f"{c}.{p}", cls, k) for c, rs in zip(components, texts) for p, cls, k in rs if p and k],
    )


def sd_full_file(modules: dict[str, LycorisModule], family: str, unet_only: bool) -> dict[str, object] | str:
    """[adapter] values for the network create_network_from_weights builds from a full file on `family`
    (SD 1.x/2.x or SDXL); else why not ("invalid:..." where kohya fails)."""
    layers = sd_layers(family)
    other = sorted({m.algo or "unknown" for m in modules.values()} - {"full"})
    if other:
        first = next(m.name for m in modules.values() if (m.algo or "unknown") == other[0])
        return (
            f"module `{first}` is a LyCORIS {other[0]} module beside the full ones; dbspec's adapter is of "
            "one kind"
        )
    unknown = layers.unknown(modules)
    if unknown:
        return unknown
    unet: dict[str, str] = {}  # diffusers path -> kind
    built_texts: list[list[str]] = [[] for _ in layers.texts]
    for name, module in sorted(modules.items()):
        slot, (path, cls, kind) = layers.lookup(name)
        if not kind:
            return (
                f"{INVALID}module `{name}` is kohya's {cls} `{path}`, which LyCORIS's FullModule does not "
                "take (Linear and convolution layers only): ValueError"
            )
        wrong = diff_dims_error(name, module, path, conv=kind != "linear")
        if wrong:
            return wrong
        if slot is None:
            unet[layers.unet_path(path)] = kind
        elif not unet_only:  # apply_to drops the text-encoder modules with --network_train_unet_only
            built_texts[slot].append(path)
    if not unet:
        return "it holds no module of the U-Net"
    rows = layers.rows
    text, text_2 = _text_targets(layers.texts, built_texts)
    out: dict[str, object] = {
        "kind": "full",
        "denoiser_targets": _suffixes({p for p, k in unet.items() if k != "conv"}, rows),
        "conv_targets": _suffixes({p for p, k in unet.items() if k == "conv"}, rows),
        "text_encoder_targets": text,
        "init_scale": 2.0,
    }
    if text_2 is not None:
        out["text_encoder_2_targets"] = text_2
    return out


def diff_dims_error(name: str, module: LycorisModule, path: str, conv: bool) -> str:
    """Why a full module's `diff` cannot be kohya's layer `path` (a convolution's is 4-D, a Linear's 2-D:
    FullModule's copy_ raises, DBS402); "" when it fits."""
    dims = len(module.shapes["diff"])
    if dims == (4 if conv else 2):
        return ""
    kind = "convolution" if conv else "Linear"
    what = f"`{name}.diff` has {dims} dimensions; kohya's `{path}` is a {kind}"
    return f"{INVALID}{what}: FullModule's copy_ raises"
