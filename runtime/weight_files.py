"""Load an adapter's starting file (`plan.adapter.init_weights`): a `.safetensors` file, or a torch.save
file (any other name: `.pt`, `.ckpt`, `.pth`, `.bin`) as kohya loads `--network_weights`
(`torch.load(map_location="cpu")`, here always weights_only=True: no code of the file runs). The state dict
is what compiler/pickle_weights.py reads at plan time: the tensors of its `state_dict`, else of the
top-level dict."""

from __future__ import annotations

import pickle
import re

import torch
from safetensors.torch import load_file

from dbspec.util.torch_files import is_torch_file


def load_weights(path) -> dict[str, torch.Tensor]:
    if not is_torch_file(path):  # by its first bytes, as the plan read it
        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refuses a global it does not allow
        raise ValueError(
            f"{path}: torch.load(weights_only=True) refuses it ({_why(exc)}); save its state dict alone "
            "(torch.save(dict_of_tensors)) or convert it to .safetensors"
        ) from exc
    except (RuntimeError, EOFError) as exc:  # a file damaged since the plan read it
        raise ValueError(f"{path}: torch.load cannot read it ({_why(exc)}); re-save it") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return state_tensors(obj)


def state_tensors(obj: dict) -> dict[str, torch.Tensor]:
    """The tensors of a torch.load'ed dict's `state_dict` (kohya's / Lightning's full checkpoint), else of the
    dict itself, as compiler/pickle_weights.py reads them; a saved Parameter as its plain tensor (the loaders
    copy values)."""
    inner = obj.get("state_dict")
    state = inner if isinstance(inner, dict) else obj
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return {k: v.detach() if isinstance(v, torch.nn.Parameter) else v for k, v in tensors.items()}


def _why(exc: BaseException) -> str:
    """The line of torch's message that names the problem (weights_only's `Unsupported global: ...`)."""
    text = str(exc).strip()
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    if found:
        return found.group(1).split(" Please use")[0]
    return text.splitlines()[0] if text else type(exc).__name__
