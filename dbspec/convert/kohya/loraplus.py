"""kohya's LoRA+ network arguments (networks.lora, networks.dylora, lora_flux, lora_sd3, LyCORIS lora/locon):
the `loraplus_*_ratio` keys into [adapter] `loraplus_*ratio`."""

from __future__ import annotations

from typing import Any


def loraplus(kwargs: dict[str, str], put: dict[str, Any], unsupported: dict[str, str]) -> None:
    """networks.lora's (and LyCORIS's, for algo lora/locon) LoRA+: lora_up trains at lr x ratio, the UNet's
    ratio `loraplus_unet_lr_ratio or loraplus_lr_ratio`, the text encoders'
    `loraplus_text_encoder_lr_ratio or loraplus_lr_ratio` (a component's 0 falls back to the general ratio,
    Python's `or`); a ratio that comes out 0 (`loraplus_lr_ratio = 0`) makes the plus group's rate 0, which
    prepare_optimizer_params skips: `loraplus_zero = "held"` (was DBS403)."""
    keys = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
    given = {k: float(kwargs.pop(k)) for k in keys if k in kwargs}
    general = given.get(keys[0])
    unet = given.get(keys[1]) or general
    text = given.get(keys[2]) or general
    if 0 in (unet, text):  # kohya gives the "plus" group lr x 0 and skips it: lora_up stays out of the
        # optimizer (its gradients computed, never cleared, clipped with the rest): adapter.loraplus_zero
        put["loraplus_zero"] = "held"
    if unet == text:
        if unet:
            put["loraplus_ratio"] = unet
        return
    if unet:
        put["loraplus_denoiser_ratio"] = unet
    if text:
        put["loraplus_text_encoder_ratio"] = text
