"""`dbspec plan --download`: fetch hub models into the local Hugging Face cache, then plan from their files.

Planning never touches the network otherwise. Only what training needs is fetched: configs, tokenizer
files and safetensors weights (no .bin, .ckpt, ONNX or Flax copies).
"""

from __future__ import annotations

from pathlib import Path

ALLOW = ["*.json", "*.txt", "*.model", "*.safetensors"]


class DownloadError(Exception):
    """The model could not be fetched; the message says why and what to do."""


def is_local(base: str, spec_dir: Path) -> bool:
    if base.startswith("builtin:") or Path(base).is_absolute():
        return True
    try:
        return (spec_dir / base).expanduser().exists()
    except OSError:  # a name too long to probe is a path, not a hub id: the model pass reports it (DBS310)
        return True


def download(repo_id: str, revision: str) -> Path:
    """Fetch `repo_id` at `revision` into the Hugging Face cache (huggingface_hub, no torch);
    its snapshot folder."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # it comes with diffusers; a torch-free install may lack it
        raise DownloadError("downloading needs huggingface_hub: pip install huggingface_hub") from exc
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=ALLOW))
    except Exception as exc:  # noqa: BLE001 - network, auth, offline mode, missing repo: all end the same way
        raise DownloadError(
            f"cannot download {repo_id}@{revision or 'main'}: {type(exc).__name__}: {exc}"
        ) from None
