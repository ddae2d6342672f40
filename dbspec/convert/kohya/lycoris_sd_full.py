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

from dbspec.convert.kohya.lycoris_file import Row, _suffixes, _text_targets, clip_text, sd_unet, sdxl_unet
from dbspec.convert.kohya.lycoris_flow_weights import LycorisModule
from dbspec.families import family_spec
from dbspec.unet_layout import SDXL_UNET, diffusers_name

INVALID = "invalid:"  # kohya itself fails (DBS402); other messages: dbspec cannot express it (DBS403)


def _index(prefix: str, rows: list[Row]) -> dict[str, Row]:
    """kohya's module name -> its inventory row (create_network_from_weights' lookup)."""
    return {f"{prefix}_{path}".replace(".", "_"): (path, cls, kind) for path, cls, kind in rows if path}


def sd_full_file(modules: dict[str, LycorisModule], family: str, unet_only: bool) -> dict[str, object] | str:
    """[adapter] values for the network create_network_from_weights builds from a full file on `family`
    (SD 1.x/2.x or SDXL); else why not ("invalid:..." where kohya fails)."""
    facts = family_spec(family).kohya
    sdxl = facts.original_unet_names  # kohya's SDXL U-Net (the original layout) and its two CLIP encoders
    unet_rows = sdxl_unet() if sdxl else sd_unet(facts.v2)
    texts = [clip_text(12), clip_text(32, projection=True)] if sdxl else [clip_text(23 if facts.v2 else 12)]
    text_prefixes = ["lora_te1", "lora_te2"] if sdxl else ["lora_te"]
    unet_index = _index("lora_unet", unet_rows)
    text_index = [_index(p, rows) for p, rows in zip(text_prefixes, texts)]
    other = sorted({m.algo or "unknown" for m in modules.values()} - {"full"})
    if other:
        first = next(m.name for m in modules.values() if (m.algo or "unknown") == other[0])
        return (
            f"module `{first}` is a LyCORIS {other[0]} module beside the full ones; dbspec's adapter is of "
            "one kind"
        )
    unknown = sorted(
        n for n in modules if n not in unet_index and not any(n in index for index in text_index)
    )
    if unknown:
        return (
            f"module `{unknown[0]}` names no layer of kohya's {family_spec(family).title} models "
            f"({len(unknown)} such): LyCORIS skips it, so the file is likely another model's; dbspec starts "
            "only from a file whose every module is a layer of the run"
        )
    unet: dict[str, str] = {}  # diffusers path -> kind
    built_texts: list[list[str]] = [[] for _ in texts]
    for name, module in sorted(modules.items()):
        found = unet_index.get(name)
        slot = None if found is not None else next(i for i, index in enumerate(text_index) if name in index)
        path, cls, kind = found if found is not None else text_index[slot][name]
        if not kind:
            return (
                f"{INVALID}module `{name}` is kohya's {cls} `{path}`, which LyCORIS's FullModule does not "
                "take (Linear and convolution layers only): ValueError"
            )
        dims = len(module.shapes["diff"])
        if dims != (2 if kind == "linear" else 4):
            return (
                f"{INVALID}`{name}.diff` has {dims} dimensions; kohya's `{path}` is a "
                f"{'Linear' if kind == 'linear' else 'convolution'}: FullModule's copy_ raises"
            )
        if found is not None:
            unet[diffusers_name(path, SDXL_UNET, ".") if sdxl else path] = kind
        elif not unet_only:  # apply_to drops the text-encoder modules with --network_train_unet_only
            built_texts[slot].append(path)
    if not unet:
        return "it holds no module of the U-Net"
    rows = [(diffusers_name(p, SDXL_UNET, ".") if sdxl else p, c, k) for p, c, k in unet_rows if k]
    text, text_2 = _text_targets(texts, built_texts)
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
