"""lycoris.kohya `--network_weights` of a run of several kinds saved at other alphas: `adapter.init_alpha =
"ignore"`.

LycorisNetworkKohya builds every module before train_network.py calls its `load_weights`, and LoConModule,
LohaModule and LokrModule fix their scale then (`self.scale = alpha / r_factor`, a Python float, lycoris-lora
4.1.3): `load_state_dict(strict=False)` copies the file's `alpha` into the module's buffer, which their
forward never reads and `save_weights` writes back. So LyCORIS trains such a file's weights at the network's
(a preset entry's) alpha, as kohya's networks.lora does (file_alpha.py), and dbspec does the same with
`init_alpha = "ignore"` (runtime/lycoris_init.py); its exports carry the alpha it trained at, where the saved
file of kohya's run carries the starting file's: DBS404. Full, IA^3, GLoRA, Diag-OFT and BOFT modules never
read the alpha either (no check), and a LoKr module whose two factors are full trains at scale 1 whatever it
is. DyLoraModule is the exception: its `get_weight` scales by the buffer, so a DyLoRA layer trains at the
file's alpha; the run checks that it is its block's when it loads the file (runtime/mixed_init.py), as the
file's LoRA-layout tensors do not say which module is LyCORIS's DyLoRA and which its LoCon; where the run
has no LoCon layer they are DyLoRA's, and one at another alpha is DBS403."""

from __future__ import annotations

import math

from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.file_alpha import _run_alphas
from dbspec.convert.kohya.lycoris_flow_weights import LycorisModule, read_lycoris_file

_SCALED = ("locon", "loha", "lokr")  # the classes whose scale the network's alpha fixes (the file's unread)


def map_lycoris_file_alphas(weights: Legacy, paths, conv: Conversion) -> None:
    """`adapter.init_alpha = "ignore"` and a DBS404 warning when a LoCon / LoHa / LoKr module of the
    `--network_weights` file holds an alpha that is none of the run's (the adapter's alpha / conv_alpha, a
    block's own; with rs_lora the buffer's alpha x sqrt(dim) too)."""
    local = paths.local(weights.value)
    if local is None:
        return  # a Windows path: the run checks the alphas when it loads the file
    try:
        modules = read_lycoris_file(local)
    except (ModelFileError, OSError):
        return  # the plan reads it and says why (DBS357)
    run = _alphas(conv)
    other = next(
        (
            m
            for _, m in sorted(modules.items())
            if _scaled(m) and not any(math.isclose(m.alpha, x, rel_tol=1e-3) for x in run)
        ),
        None,
    )
    if other is None:
        return
    if other.algo == "locon" and _dylora_layout(conv):
        conv.unsupported(
            weights,
            f"`{other.name}.alpha` is {other.alpha:g}, none of the run's alphas ({_listed(run)}), on a "
            "module in kohya's LoRA layout, which in this run only DyLoRA layers save: LyCORIS's "
            "DyLoraModule scales by the alpha buffer load_weights fills, so kohya trains that layer at the "
            "file's alpha, where dbspec takes a DyLoRA layer's alpha from its preset entry alone",
        )
        return
    conv.put(
        ("adapter", "init_alpha"),
        "ignore",
        conv.comment(
            weights, "LyCORIS's LoCon / LoHa / LoKr modules keep their scale; the file fills a buffer"
        ),
    )
    conv.differs(
        weights,
        f"`{other.name}.alpha` is {other.alpha:g}, none of the run's alphas ({_listed(run)}): "
        "LyCORIS trains the file's weights at the network's (its preset entry's) alpha / dim, the scale its "
        "module fixed when it was built, and load_weights puts the file's alpha in the module's buffer, "
        "which save_weights writes, so kohya's saved file would carry the file's alphas beside weights "
        'trained at the network\'s scale; dbspec trains the same (adapter.init_alpha = "ignore") and its '
        "exports carry the alpha it trained at",
    )


def _dylora_layout(conv: Conversion) -> bool:
    """The run's only kind in kohya's LoRA layout is DyLoRA (a file's `lora_down` / `lora_up` module is a
    DyLoraModule's: no LoCon layer)."""
    kinds = {
        value
        for key, (value, _) in conv.values.items()
        if key == ("adapter", "kind")
        or (key[:2] in (("adapter", "blocks"), ("adapter", "text_encoder_blocks")) and key[-1] == "kind")
    }
    return "dylora" in kinds and "lora" not in kinds


def _scaled(m: LycorisModule) -> bool:
    """A module whose alpha sets its scale in LyCORIS (LoCon, LoHa, a LoKr with a low-rank factor)."""
    if m.algo not in _SCALED or m.alpha is None:
        return False
    return not (m.algo == "lokr" and "lokr_w1" in m.shapes and "lokr_w2" in m.shapes)


def _alphas(conv: Conversion) -> set[float]:
    """Every alpha the converted run gives a layer, and with rank_stabilized the alpha x sqrt(rank) its
    module's buffer holds (LyCORIS: `alpha * (dim / r_factor)`)."""
    linear, convolution = _run_alphas(conv)
    out = linear | convolution
    values = conv.values
    stabilized = any(
        key[-1] == "rank_stabilized" and value in (True, "on") for key, (value, _) in values.items()
    )
    if not stabilized:
        return out
    for key, (value, _) in values.items():
        if key[0] != "adapter" or key[-1] not in ("rank", "conv_rank") or not value:
            continue
        alpha = values.get((*key[:-1], "alpha" if key[-1] == "rank" else "conv_alpha"), (None, ""))[0]
        if alpha is not None:
            out.add(float(alpha) * math.sqrt(float(value)))
    return out


def _listed(alphas: set[float]) -> str:
    return ", ".join(f"{x:g}" for x in sorted(alphas))
