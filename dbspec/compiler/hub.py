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


def download(repo_id: str, revision: str, skip: tuple[str, ...] = ()) -> Path:
    """Fetch `repo_id` at `revision` into the Hugging Face cache (huggingface_hub, no torch);
    its snapshot folder. `skip`: component folders whose weights come from elsewhere (model.denoiser_file,
    model.text_encoder_files, model.vae): their configs are fetched, not their weights."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # it comes with diffusers; a torch-free install may lack it
        raise DownloadError("downloading needs huggingface_hub: pip install huggingface_hub") from exc
    try:
        ignore = [f"{folder}/*.safetensors" for folder in skip] or None
        return Path(
            snapshot_download(
                repo_id, revision=revision or None, allow_patterns=ALLOW, ignore_patterns=ignore
            )
        )
    except Exception as exc:  # noqa: BLE001 - network, auth, offline mode, missing repo: all end the same way
        raise DownloadError(
            f"cannot download {repo_id}@{revision or 'main'}: {type(exc).__name__}: {exc}"
        ) from None


def weights_elsewhere(model) -> tuple[str, ...]:
    """The base model's component folders whose weights the spec's component files replace (`model` is the
    spec's [model]); with the family unknown before planning, the diffusers names of every family."""
    from dbspec.families import FAMILIES, family_spec, hub_model

    family = model.family if model.family != "auto" else (hub_model(model.base) or (None,))[0]
    specs = [family_spec(family)] if family else list(FAMILIES.values())
    out: list[str] = []
    for spec in specs:
        if model.denoiser_file:
            out.append(spec.denoiser)
        out += [e.component for e, file in zip(spec.text_encoders, model.text_encoder_files) if file]
    if model.vae:
        out.append("vae")
    return tuple(dict.fromkeys(out))
