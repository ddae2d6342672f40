"""kohya's LoRA+ network arguments (networks.lora, networks.dylora, lora_flux, lora_sd3, LyCORIS lora/locon):
the `loraplus_*_ratio` keys into [adapter] `loraplus_*ratio`."""

from __future__ import annotations

from typing import Any


def loraplus(kwargs: dict[str, str], put: dict[str, Any], unsupported: dict[str, str]) -> None:
    """networks.lora's (and LyCORIS's, for algo lora/locon) LoRA+: lora_up trains at lr x ratio, the UNet's
    ratio `loraplus_unet_lr_ratio or loraplus_lr_ratio`, the text encoders'
    `loraplus_text_encoder_lr_ratio or loraplus_lr_ratio`."""
    keys = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
    given = {k: float(kwargs.pop(k)) for k in keys if k in kwargs}
    general = given.get(keys[0])
    unet = given.get(keys[1]) or general
    text = given.get(keys[2]) or general
    for key, ratio in (("loraplus_unet_lr_ratio", unet), ("loraplus_text_encoder_lr_ratio", text)):
        if ratio == 0:  # kohya gives the "plus" group lr 0 and skips it: lora_up never trains
            unsupported[key] = "0 (kohya then leaves the LoRA up matrices untrained)"
            return
    if unet == text:
        if unet:
            put["loraplus_ratio"] = unet
        return
    if unet:
        put["loraplus_denoiser_ratio"] = unet
    if text:
        put["loraplus_text_encoder_ratio"] = text
