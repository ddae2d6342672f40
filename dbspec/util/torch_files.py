"""Whether a weight file is torch.save's or safetensors', by its first bytes (torch-free: the plan reads
the file with compiler/pickle_weights.py or the safetensors header, the run with torch.load or load_file)."""

from __future__ import annotations

import os

# torch.save's non-zip format (torch < 1.6, or _use_new_zipfile_serialization=False) opens with a pickled
# magic number, 0x1950a86a20f9469cfc6c: PROTO 2, LONG1 of 10 bytes, little-endian.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip (torch >= 1.6)


def is_torch_file(path: str | os.PathLike) -> bool:
    """A torch.save file (zip or legacy) by its first bytes, whatever its name; a safetensors file (8 bytes
    of header length, then `{`) is not. A file that is neither, or cannot be opened, goes by its name (any
    but `.safetensors` is torch's), so that the reader it goes to reports it in its own terms."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_MAGIC))
    except OSError:
        head = b""
    if head[8:9] == b"{":  # a safetensors header's first byte (neither magic has it there)
        return False
    if head.startswith(ZIP_MAGIC) or head == LEGACY_MAGIC:
        return True
    return not str(path).lower().endswith(".safetensors")
