"""A --network_weights file's text-encoder modules at text_encoder_lr 0 (issue 12): train_network.py's
apply_to keeps the network's text-encoder modules whenever --network_train_unet_only is off
(is_train_text_encoder reads no rate), create_network_from_weights (--dim_from_weights) or load_weights puts
the file's weights in them, and the networks' prepare_optimizer_params leave a group at rate 0 out of the
optimizer (networks.lora: "lr" 0 skipped; LyCORIS: "NO LR skipping!"). The text encoder then encodes every
step through the file's modules, which never change, yet they still take gradients that max_grad_norm's
clipping counts (get_trainable_params: every parameter of the network). dbspec adapts a text encoder only
while it trains, so the converted run would leave it plain: DBS403 for every --network_weights path
(networks.lora, networks.dylora, networks.lora_flux / lora_sd3, lycoris.kohya's kinds on SD 1.x/2.x, SDXL,
Flux and SD3)."""

from __future__ import annotations

from dbspec.compiler.safetensors_header import ModelFileError, read_safetensors_header
from dbspec.convert.common.core import Conversion, Legacy

# kohya's per-encoder rates (prepare_optimizer_params_with_multiple_te_lrs): the file's prefix -> the
# text_encoder_lr value it trains at (lora_flux: [CLIP-L, T5-XXL]; lora_sd3: [CLIP-L, CLIP-G, T5-XXL]);
# T5-XXL's modules train only with train_t5xxl (lora_flux.py / lora_sd3.py here), left to those mappings
_MULTIPLE = {
    "networks.lora_flux": {"lora_te1_": 0},
    "networks.lora_sd3": {"lora_te1_": 0, "lora_te2_": 1},
}


def _rates(a: dict[str, Legacy]) -> list[float]:
    te = a["text_encoder_lr"].value
    values = te if isinstance(te, list) else [te] if te is not None else []
    if not values:
        return [float(a["learning_rate"].value or 0.0)]
    return [float(v) for v in values]


def idle_text_modules(a: dict[str, Legacy], paths, conv: Conversion) -> bool:
    """Report (DBS403) a --network_weights file whose text-encoder modules kohya applies with the file's
    weights and never trains (their rate 0); True when reported. An unreadable file is left to the
    mappings that read it."""
    weights = a["network_weights"]
    if not weights.value or ("network_train_unet_only" in a and a["network_train_unet_only"].value):
        return False
    local = paths.local(weights.value)
    try:
        names = sorted({k.split(".", 1)[0] for k in read_safetensors_header(local)}) if local else []
    except (ModelFileError, OSError, ValueError):
        return False
    rates = _rates(a)
    module = a["network_module"].value if "network_module" in a else None
    per_encoder = _MULTIPLE.get(str(module))
    idle: dict[str, str] = {}  # the first idle module of each encoder prefix
    for name in names:
        if not name.startswith("lora_te"):
            continue
        prefix = name[: name.index("_", len("lora_te")) + 1]
        if per_encoder is None:
            rate = rates[0]
        elif prefix in per_encoder:
            rate = rates[min(per_encoder[prefix], len(rates) - 1)]
        else:
            continue
        if rate == 0:
            idle.setdefault(prefix, name)
    if not idle:
        return False
    from_file = a["dim_from_weights"]
    key = from_file if from_file.value else weights
    first = ", ".join(f"`{n}`" for n in idle.values())
    conv.unsupported(
        key,
        f"`{weights.value}` holds text-encoder modules ({first}) whose text_encoder_lr is 0: kohya's "
        "apply_to keeps them with the file's weights (it reads no rate) and the optimizer leaves them out, "
        "so the text encoder encodes through modules that never train (their gradients still count in "
        "max_grad_norm's clipping); dbspec adapts a text encoder only while it trains. Give them a rate, or "
        "train with --network_train_unet_only (apply_to then drops them)",
    )
    return True
