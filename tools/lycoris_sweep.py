"""Convert kohya lycoris.kohya command lines over every network algo x preset-entry algo x option and group
what dbspec refuses as inexpressible (DBS403): the check behind issue 12's "no refusal left" claims.

    PYTHONPATH=.:tests OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python tools/lycoris_sweep.py SHAPE [WHAT]

SHAPE: where the preset file's entry sits: sd (SD 1.x feed-forwards), flux (Flux's fused image q/k/v), te
(CLIP's MLPs), resnet (the ResNets, k x k convolutions), sd3 (SD3's fused x-block q/k/v). WHAT: args
(network_args), options (the entry's own), or both (the default). About 0.1 s per conversion, 1900 to 3800
per shape. Prints each DBS403 message (numbers as N) with how many combinations gave it and a few of them.
Conversions only: a combination that converts is not thereby checked against LyCORIS (the runtime tests
do that, tests/runtime/test_lycoris_*.py).
"""

from __future__ import annotations

import collections
import itertools
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "tests/unit")
from test_convert_kohya_refusals_audit import _convert, _flux, _resnet, _sd  # noqa: E402

ALGOS = ["locon", "loha", "lokr", "full", "ia3", "diag-oft", "boft", "glora", "dylora", "tlora"]
ARGS = [
    "",
    '"dropout=0.1"',
    '"rank_dropout=0.1"',
    '"bypass_mode=True"',
    '"bypass_mode=True" "dropout=0.1"',
    '"bypass_mode=True" "rank_dropout=0.1"',
    '"use_scalar=True"',
    '"use_tucker=True"',
    '"rs_lora=True"',
    '"dora_wd=True"',
    '"dora_wd=True" "wd_on_output=False"',
    '"full_matrix=True"',
    '"factor=4"',
    '"decompose_both=True"',
    '"constraint=0.1"',
    '"rescaled=True"',
    '"module_dropout=0.1"',
    '"rank_dropout_scale=True" "rank_dropout=0.1"',
    '"train_norm=True"',
]
OPTIONS = [
    "use_scalar = true",
    "use_tucker = true",
    "rs_lora = true",
    "weight_decompose = true",
    "wd_on_out = false",
    "bypass_mode = true",
    "factor = 4",
    "decompose_both = true",
    "full_matrix = true",
    "unbalanced_factorization = true",
    "constraint = 0.001",
    "rescaled = true",
    "block_size = 2",
    "train_on_input = true",
    'sig_type = "last"',
    "use_data_init = false",
    "rank_dropout_scale = true",
    "alpha = 2",
    "dim = 8",
]
TE = """\
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
[module_algo_map.CLIPMLP]
algo = "{algo}"
{extra}
"""
SD3 = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["joint_blocks.*.attn.qkv", "joint_blocks.*.attn.proj"]
text_encoder_target_module = []
[name_algo_map."joint_blocks.*.x_block.attn.qkv"]
algo = "{algo}"
{extra}
"""


def preset(shape: str, entry: str, extra: str) -> str:
    if shape == "sd":
        return _sd(entry, extra)
    if shape == "flux":
        return _flux(entry, extra)
    if shape == "te":
        return TE.format(algo=entry, extra=extra)
    if shape == "resnet":  # the ResNets the entry's, the feed-forwards LoCon, no default names (conv_in)
        text = _resnet(entry, extra, "locon")
        return text.replace(
            "text_encoder_target_module", "unet_target_name = []\ntext_encoder_target_module", 1
        )
    return SD3.format(algo=entry, extra=extra)


def cases(what: str):
    """(network algo, entry algo, network_args, the entry's extra lines)."""
    for net, entry in itertools.product(ALGOS, ALGOS):
        size = "dim = 8" if entry in ("boft", "diag-oft") else "dim = 4" if entry == "dylora" else ""
        boft = ' "conv_dim=8"' if net == "boft" else ""
        for args in ARGS if what in ("args", "both") and net != entry else ():
            yield net, entry, args + boft, size
        for option in OPTIONS if what in ("options", "both") else ():
            own = "dim" in option or (entry == "dylora" and "block_size" in option)
            yield net, entry, boft, option + ("" if own or not size else "\n" + size)


def main(shape: str, what: str = "both") -> dict[str, list[str]]:
    family = {"flux": "flux", "sd3": "sd3"}.get(shape, "sd")
    refused: dict[str, list[str]] = collections.defaultdict(list)
    for net, entry, args, extra in cases(what):
        with tempfile.TemporaryDirectory() as folder:
            outcome = _convert(Path(folder), family, f'"algo={net}" {args}', preset(shape, entry, extra), "")
        for d in outcome.diagnostics:
            if d.code == "DBS403" and "did not convert" not in d.message:
                own = extra.splitlines()[0] if extra else "-"
                label = f"{net} network, {entry} entry, {args.strip() or '-'} / {own}"
                refused[re.sub(r"\d+", "N", d.message)[:300]].append(label)
    return refused


if __name__ == "__main__":
    found = main(*sys.argv[1:3])
    for message, labels in sorted(found.items(), key=lambda item: -len(item[1])):
        print(len(labels), message)
        for label in labels[:6]:
            print("    ", label)
    print(f"{sum(map(len, found.values()))} refused combinations")
