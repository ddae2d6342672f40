"""lycoris.kohya `--dim_from_weights` on Flux / SD3 with a file holding LyCORIS NormModules (`w_norm` /
`b_norm`, what a `train_norm` run saves). create_network_from_weights (lycoris-lora 4.1.3, lycoris/kohya.py)
builds a NormModule on every module of kohya's models the file names (get_module: `w_norm` picks it), the
text encoders numbered as kohya hands them to LyCORIS (Flux: `lora_te1` CLIP-L, `lora_te2` T5-XXL; SD3:
`lora_te1` CLIP-L, `lora_te2` CLIP-G, `lora_te3` T5-XXL), and make_module_from_state_dict copies the
file's offsets into it (lycoris/modules/norms.py):

- CLIP's LayerNorms are affine: NormModule trains offsets of their weight and bias, as on SD. dbspec's
  `[adapter] text_encoder_norms` (SD3's CLIP-G its own `text_encoder_2_norms` where it holds other norms),
  started from the file (runtime/init_weights.py _load_norms); `--network_train_unet_only` drops them, as
  apply_to does.
- T5-XXL's T5LayerNorm (a weight, no `_norm` method), the denoiser's RMSNorms (Flux's `scale` without a
  weight, SD3's without `_norm`) and any Linear: NormModule is "not supported" and builds no `w_norm`, so
  the copy_ raises AttributeError. The blocks' and final layers' LayerNorms have no weight or bias
  (elementwise_affine=False): NormModule builds, and its make_weight reads the weight, None, at kohya's
  first training step (AttributeError). Both DBS402.
- A name that is no module of kohya's models builds nothing (LyCORIS skips it): DBS403, as for the other
  file kinds (the file is likely another model's)."""

from __future__ import annotations

from dbspec.convert.kohya.lycoris_file import clip_text, norm_targets
from dbspec.convert.kohya.lycoris_flow_file import flux_model, mmdit, t5_encoder
from dbspec.convert.kohya.lycoris_flow_weights import LycorisModule
from dbspec.convert.kohya.lycoris_sd_full import INVALID, _index

_TITLES = {"flux": "Flux", "sd3": "SD3"}


def _models(family: str) -> tuple[list, list]:
    """(CLIP encoders' inventories by prefix, the other models' (prefix, rows, what)) of kohya's `family`."""
    if family == "flux":
        clips = [("lora_te1", clip_text(12))]
        others = [("lora_unet", flux_model(), "kohya's Flux"), ("lora_te2", t5_encoder(), "T5-XXL")]
    else:
        clips = [("lora_te1", clip_text(12, projection=True)), ("lora_te2", clip_text(32, projection=True))]
        others = [("lora_unet", mmdit(), "kohya's MMDiT"), ("lora_te3", t5_encoder(), "T5-XXL")]
    return clips, others


def flow_file_norms(
    modules: dict[str, LycorisModule], family: str, unet_only: bool
) -> dict[str, object] | str:
    """[adapter] text_encoder_norms (text_encoder_2_norms) for the file's NormModules on `family` (flux or
    sd3); {} when the file has none (or apply_to drops them all); else why not ("invalid:..." where kohya
    fails, DBS402; otherwise DBS403)."""
    norms = sorted(n for n, m in modules.items() if m.algo == "norm")
    if not norms:
        return {}
    if family not in _TITLES:
        return f"module `{norms[0]}` is a NormModule; dbspec reads a file's NormModules on Flux and SD3"
    clips, others = _models(family)
    clip_index = [_index(prefix, rows) for prefix, rows in clips]
    other_index = [(_index(prefix, rows), what) for prefix, rows, what in others]
    paths: list[list[str]] = [[] for _ in clips]
    for name in norms:
        slot = next((i for i, index in enumerate(clip_index) if name in index), None)
        if slot is not None:
            path, cls, _ = clip_index[slot][name]
            if cls != "LayerNorm":
                return (
                    f"{INVALID}`{name}.w_norm`: CLIP's `{path}` is a {cls}; LyCORIS's NormModule does not "
                    "support it and builds no `w_norm`, so make_module_from_state_dict's copy_ raises "
                    "AttributeError"
                )
            paths[slot].append(path)
            continue
        found = next(((index[name], what) for index, what in other_index if name in index), None)
        if found is None:
            return (
                f"norm module `{name}` names no layer of kohya's {_TITLES[family]} models: LyCORIS skips it, "
                "so the file is likely another model's; dbspec starts only from a file whose every module "
                "is a layer of the run"
            )
        (path, cls, _), what = found
        if cls == "LayerNorm":  # kohya's Flux / MMDiT LayerNorms: elementwise_affine=False
            return (
                f"{INVALID}`{name}.w_norm`: {what}'s `{path}` is a LayerNorm without weight or bias; "
                "LyCORIS's NormModule reads its weight, None, and kohya's first training step raises "
                "AttributeError"
            )
        return (
            f"{INVALID}`{name}.w_norm`: {what}'s `{path}` is a {cls}; LyCORIS's NormModule does not "
            "support it (no `_norm` method) and builds no `w_norm`, so make_module_from_state_dict's copy_ "
            "raises AttributeError"
        )
    if unet_only or not any(paths):  # apply_to drops the text encoders' modules, NormModules too
        return {}
    targets = norm_targets([], paths, v2=False, sdxl=family == "sd3")  # SD3's two CLIPs: SDXL's rows
    out: dict[str, object] = {"text_encoder_norms": targets.text_encoder}
    if targets.text_encoder_2 is not None:
        out["text_encoder_2_norms"] = targets.text_encoder_2
    return out
