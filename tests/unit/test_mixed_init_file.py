"""`adapter.init_weights` for a run of several kinds (blocks with their own `kind`), checked at plan time
from the file's header (compiler/mixed_init_file.py; issue 12): every tensor one of the run's kinds', the
modules counted per trained model; DyLoRA layers' modules in kohya's LoRA layout (their alpha alone
loads). The load itself against lycoris-lora:
tests/runtime/test_lycoris_mixed_file.py (Flux: test_lycoris_mixed_flow_file.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from test_init_weights import OUT, Q, TE, _plan


def _write(path: Path, modules: dict[str, dict[str, tuple]]) -> Path:
    """modules: name -> {tensor: shape} (F16 zeros), each with alpha 1."""
    header: dict = {}
    data = b""
    for name, tensors in modules.items():
        for tensor, shape in {**tensors, "alpha": ()}.items():
            count = 1
            for n in shape:
                count *= n
            raw = struct.pack("<e", 1.0) if tensor == "alpha" else bytes(2 * count)
            header[f"{name}.{tensor}"] = {
                "dtype": "F16",
                "shape": list(shape),
                "data_offsets": [len(data), len(data) + len(raw)],
            }
            data += raw
    raw_header = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw_header)) + raw_header + data)
    return path


LORA = {"lora_down.weight": (4, 320), "lora_up.weight": (320, 4)}
LOHA = {"hada_w1_a": (320, 2), "hada_w1_b": (2, 320), "hada_w2_a": (320, 2), "hada_w2_b": (2, 320)}
BLOCKS = '\n[[adapter.blocks]]\npattern = "attn2"\nkind = "{kind}"\nrank = 2\nalpha = 1.0\n'


def _spec(kind: str = "loha") -> str:
    return 'rank = 4\nalpha = 1.0\ninit_weights = "prev.safetensors"\ninit_partial = true' + BLOCKS.format(
        kind=kind
    )


def test_a_file_of_the_runs_kinds_starts_it(tmp_path):
    _write(tmp_path / "prev.safetensors", {Q: LORA, OUT: LOHA, TE: {**LORA, "lora_down.weight": (4, 768)}})
    planned = _plan(tmp_path, _spec())
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert planned.plan.adapter.init_layers == 2  # Q, OUT (the text encoder does not train: DBS358)
    assert planned.plan.adapter.init_partial
    assert "DBS358" in {d.code for d in planned.diagnostics}


def test_a_tensor_of_no_kind_of_the_run_is_dbs356(tmp_path):
    _write(tmp_path / "prev.safetensors", {Q: LORA, OUT: {"oft_blocks": (80, 4, 4)}})
    planned = _plan(tmp_path, _spec())
    found = [d for d in planned.diagnostics if d.code == "DBS356"]
    assert planned.plan is None and found and f"{OUT}.oft_blocks" in found[0].message


def test_dylora_layers_modules_in_kohyas_lora_layout_plan(tmp_path):
    """A DyLoraModule saves kohya's `lora_down` / `lora_up` / `alpha` (was DBS356 on SD 1.x)."""
    _write(
        tmp_path / "prev.safetensors",
        {Q: LORA, OUT: {"lora_down.weight": (2, 320), "lora_up.weight": (320, 2)}},
    )
    planned = _plan(tmp_path, _spec("dylora") + "unit = 1\n")  # the block's own unit
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    assert planned.plan.adapter.init_layers == 2
    _write(tmp_path / "prev.safetensors", {Q: LORA, OUT: LOHA})  # LoHa's factors are no DyLoRA run's
    planned = _plan(tmp_path, _spec("dylora") + "unit = 1\n")
    found = [d for d in planned.diagnostics if d.code == "DBS356"]
    assert planned.plan is None and found and f"{OUT}.hada_w1_a" in found[0].message
