"""kohya `--network_weights` saved at another alpha than the run's: `adapter.init_alpha = "ignore"`.

networks.lora's LoRAModule (lora_fa's, lora_flux's, which lora_sd3 uses, alike) fixes its scale when it is
built, `self.scale = alpha / self.lora_dim` from `--network_alpha` (`conv_alpha`, a block's alpha), and keeps
`alpha` as a buffer. train_network.py then calls `network.load_weights(file)`, `load_state_dict(weights_sd,
False)`, which copies the file's `lora_down` / `lora_up` into the modules and the file's `alpha` into the
buffer, leaving `self.scale` as it was: the run trains the file's weights at network_alpha / dim. save_weights
writes `state_dict()`, the buffer included, so kohya's saved file carries the starting file's alpha beside
weights trained at network_alpha's scale: a loader (kohya's own create_network_from_weights, diffusers, webui)
reads alpha / dim from it and applies the update at another strength than the run trained.

dbspec trains as kohya does (the file's alphas unread, every layer at the adapter's alpha) and its exports
carry the alpha it trained at, so they load at the trained strength; the difference in the saved file is said
here (DBS404). Where every alpha of the file is the run's, the two agree and nothing is set. A file not
readable here is left to the plan (DBS356 names the first alpha that differs and this setting). kohya's
max-norm (`--scale_weight_norms`) takes each update at the alpha buffer, the file's: the plan gives dbspec's
max-norm the file's alphas (plan.adapter.max_norm_alphas; was DBS403)."""

from __future__ import annotations

import math

from dbspec.compiler.lora_file import read_lora_file
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.convert.common.core import Conversion, Legacy

# kohya networks whose LoRAModule scales at the network's alpha and loads the file's into a buffer
# (networks.dylora's DyLoRAModule alike: `self.scale = alpha / lora_dim` at construction, which forward reads)
KOHYA_LORA_NETWORKS = (
    "networks.lora",
    "networks.lora_fa",
    "networks.lora_flux",
    "networks.lora_sd3",
    "networks.dylora",
)


def map_file_alphas(a: dict[str, Legacy], paths, conv: Conversion) -> None:
    """`adapter.init_alpha = "ignore"` and a DBS404 warning when the `--network_weights` file holds an
    alpha that is none of the converted adapter's (its alpha, conv_alpha for a k x k convolution, a block's
    own): the run trains at the adapter's alpha, kohya's saved file would carry the file's."""
    if a["network_module"].value not in KOHYA_LORA_NETWORKS:
        return
    weights = a["network_weights"]
    local = paths.local(weights.value)
    if local is None:
        return
    try:
        file = read_lora_file(local)
    except (ModelFileError, OSError):
        return  # the plan reads it and says why (DBS357)
    linear, convolution = _run_alphas(conv)
    other = next(
        (
            m
            for m in sorted(file.modules.values(), key=lambda m: m.name)
            if m.alpha is not None
            and (convolution or not m.conv)  # no conv_rank: kohya builds no module for it
            and not any(math.isclose(m.alpha, x, rel_tol=1e-3) for x in (convolution if m.conv else linear))
        ),
        None,
    )
    if other is None:
        return
    module = "DyLoRAModule" if a["network_module"].value == "networks.dylora" else "LoRAModule"
    # --scale_weight_norms: apply_max_norm_regularization reads each module's alpha buffer, the file's; the
    # plan carries those (plan.adapter.max_norm_alphas, compiler/init_weights.py); DyLoRANetwork has none
    key = ("adapter", "conv_alpha" if other.conv else "alpha")
    trained = float(conv.values[key][0]) if key in conv.values else sorted(convolution or linear)[0]
    conv.put(
        ("adapter", "init_alpha"),
        "ignore",
        conv.comment(
            weights, f"kohya's {module} keeps network_alpha's scale; load_weights sets only its buffer"
        ),
    )
    conv.differs(
        weights,
        f"`{other.name}.alpha` is {other.alpha:g}, not the network's {trained:g}: kohya trains the file's "
        f"weights at the network's alpha / dim ({module}'s scale, fixed when it is built) and load_weights "
        "puts the file's alpha in the module's buffer, which save_weights writes, so kohya's saved file "
        "would carry the file's alphas beside weights trained at the network's scale and load at another "
        'strength; dbspec trains the same (adapter.init_alpha = "ignore") and its exports carry the alpha it '
        "trained at",
    )


def _run_alphas(conv: Conversion) -> tuple[set[float], set[float]]:
    """The alphas the converted adapter gives its Linear (and 1x1) layers and its k x k convolutions: its
    alpha / conv_alpha and every block's own (a file module's block is not matched here)."""
    values = conv.values
    linear = {float(values[("adapter", "alpha")][0])} if ("adapter", "alpha") in values else set()
    convolution = (
        {float(values[("adapter", "conv_alpha")][0])} if ("adapter", "conv_alpha") in values else set()
    )
    for path, (value, _) in values.items():
        if path[:2] not in (("adapter", "blocks"), ("adapter", "text_encoder_blocks")) or value is None:
            continue
        rank = values.get((*path[:3], "conv_rank" if path[-1] == "conv_alpha" else "rank"), (None, ""))[0]
        if rank == 0:  # a block kohya builds no module for
            continue
        if path[-1] == "alpha":
            linear.add(float(value))
        elif path[-1] == "conv_alpha":
            convolution.add(float(value))
    rank = values.get(("adapter", "conv_rank"), (0, ""))[0]
    return linear or {1.0}, (convolution or linear or {1.0}) if rank else set()


def map_oft_file_alphas(modules, constraint: float, weights: Legacy, conv: Conversion) -> None:
    """kohya's networks.oft / oft_flux: `adapter.init_alpha = "ignore"` and a DBS404 warning when a module
    OFTNetwork.load_weights takes holds an alpha that is not the network's `constraint` (network_alpha, or
    with --dim_from_weights the file's first). OFTModule computes its constraint (alpha x width, a Python
    float; oft_flux's per part) when it is built and only `alpha` is a buffer, which load_state_dict
    overwrites and nothing but save_weights (and create_network_from_weights) reads again."""
    other = next(
        (
            m
            for m in sorted(modules, key=lambda m: m.name)
            if m.alpha is not None and not math.isclose(m.alpha, constraint, rel_tol=1e-3)
        ),
        None,
    )
    if other is None:
        return
    conv.put(
        ("adapter", "init_alpha"),
        "ignore",
        conv.comment(
            weights, "kohya's OFTModule keeps network_alpha's constraint; load_weights sets its buffer"
        ),
    )
    conv.differs(
        weights,
        f"`{other.name}.alpha` is {other.alpha:g}, not the network's {constraint:g}: kohya trains the file's "
        "blocks at the network's constraint (OFTModule's alpha x width, fixed when it is built) and "
        "load_weights puts the file's alpha in the module's buffer, which save_weights writes, so kohya's "
        "saved file would carry the file's alphas beside blocks trained at the network's constraint (and "
        'load at another); dbspec trains the same (adapter.init_alpha = "ignore") and its exports carry '
        "the constraint it trained at",
    )
