"""A --network_weights file that is not on this machine or cannot be read here: every reader of it (the ranks
of --dim_from_weights, DyLoRA's alphas) reports that alike, as unreadable (DBS401: convert where the file
is), not as something dbspec does not express; a file that is here and read, but of a layout dbspec cannot
use, stays each reader's own refusal (DBS403). A file here that is no safetensors file stops kohya (DBS402),
as does a --dim_from_weights file LyCORIS, or kohya's networks.lora, builds no module from."""

from __future__ import annotations

from pathlib import Path

from dbspec.compiler.pickle_weights import TorchOnlyError
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.compiler.weight_file import kohya_torch_loads, read_weights_header
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.lycoris_flow_weights import read_lycoris_file
from dbspec.util.torch_files import is_torch_file


def not_here(local: Path | None, exc: BaseException) -> str:
    """Why the file `local` (None: a path of another machine) could not be read here, or "" when `exc` is
    about its content (read_safetensors_header wraps the OSError of a file it cannot open)."""
    if local is None:
        return "a Windows path, not on this machine"
    if not local.is_file():
        return "not on this machine"
    if isinstance(exc, OSError) or isinstance(exc.__cause__, OSError):
        return f"it cannot be read here ({exc})"
    return ""


def report_weights(
    weights: Legacy, local: Path | None, exc: BaseException, need: str, conv: Conversion
) -> bool:
    """Reports `weights` unreadable (`need`: what reads the file) when `exc` came of a file that is not
    here or cannot be read, or kohya's own failure when it is here and no safetensors file (_report_broken);
    True when it did, False when the caller reports its own refusal."""
    why = not_here(local, exc)
    if why:
        conv.unreadable(weights, f"{need}: {why}")
        return True
    return local is not None and _report_broken(weights, local, conv)


def not_safetensors(weights: Legacy, paths, conv: Conversion) -> bool:
    """DBS402 when the `--network_weights` file is here and is no safetensors file (_report_broken); a file
    not here or not readable here is left to its readers (DBS401). True when reported."""
    local = paths.local(weights.value)
    return local is not None and local.is_file() and _report_broken(weights, local, conv)


def _report_broken(weights: Legacy, local: Path, conv: Conversion) -> bool:
    """DBS402 when `local` opens and is not what kohya's loader for its name reads (a truncated download, a
    saved web page, a torch.save file named `.safetensors`): load_weights and create_network_from_weights
    (networks/lora.py, lycoris/kohya.py, kohya's Flux / SD3 and DyLoRA networks) read a `.safetensors` name
    with safetensors' load_file and any other name with torch.load, each raising on the other's files and
    on corrupt ones (torch's legacy format torch.load reads, dbspec does not: left to the readers'
    refusal, DBS403). True when reported."""
    torch_load = kohya_torch_loads(local)
    if _opens(local) and is_torch_file(local) != torch_load:  # the content is the other loader's kind
        return _wrong_loader(weights, local, torch_load, conv)
    try:
        read_weights_header(local)
    except (OSError, TorchOnlyError):
        return False
    except ModelFileError as exc:
        if not_here(local, exc):  # a file it cannot open: its readers say so (DBS401)
            return False
        if torch_load:
            conv.invalid(
                weights.key,
                weights.value,
                weights.source,
                f"`{local.name}` is no torch.save file ({exc.reason}): kohya reads it with torch.load, which "
                "raises",
                help="point --network_weights at the file kohya or LyCORIS saved",
            )
            return True
        conv.invalid(
            weights.key,
            weights.value,
            weights.source,
            f"`{local.name}` is no safetensors file ({exc.reason}): kohya reads it with safetensors' "
            "load_file (load_weights; create_network_from_weights with --dim_from_weights), which raises "
            "(SafetensorError)",
            help="point --network_weights at the .safetensors file kohya or LyCORIS saved",
        )
        return True
    return False


def _opens(local: Path) -> bool:
    try:
        with local.open("rb"):
            return True
    except OSError:
        return False


def _wrong_loader(weights: Legacy, local: Path, torch_load: bool, conv: Conversion) -> bool:
    """DBS402: kohya picks the loader by the name (kohya_torch_loads) and the file is the other kind."""
    if torch_load:
        what = "is no torch.save file (its first bytes are not a zip's)"
        loader = "torch.load (any name but `.safetensors`), which raises"
    else:
        what = "is a torch.save file"
        loader = "safetensors' load_file (a `.safetensors` name), which raises (SafetensorError)"
    conv.invalid(
        weights.key,
        weights.value,
        weights.source,
        f"`{local.name}` {what}: kohya reads it with {loader}",
        help="point --network_weights at the file kohya or LyCORIS saved, under the name it was saved with",
    )
    return True


def lycoris_builds_nothing(weights: Legacy, from_file: Legacy, paths, conv: Conversion) -> bool:
    """DBS402 for lycoris.kohya with --dim_from_weights from a file here without one module LyCORIS's
    create_network_from_weights builds (lycoris/kohya.py: only `lora_unet*` / `lora_te*` names, each made
    by the class get_module detects from its keys): the network has no module, its
    prepare_optimizer_params returns no group and kohya's optimizer raises ValueError (an empty parameter
    list). True when reported."""
    local = paths.local(weights.value)
    if local is None or not local.is_file():
        return False
    try:
        modules = read_lycoris_file(local)
    except (ModelFileError, OSError):
        return False
    if any(m.algo for m in modules.values()):
        return False
    first = next(iter(modules.values()), None)
    held = f"only `{first.name}` tensors LyCORIS makes no module of" if first else "no module under them"
    conv.invalid(
        from_file.key,
        True,
        from_file.source,
        f"LyCORIS's create_network_from_weights builds modules from `{paths.name_of(weights.value)}`'s "
        f"`lora_unet*` / `lora_te*` names, and it holds {held}: the network has no module and kohya's "
        "optimizer raises ValueError (an empty parameter list)",
        help="start from a file kohya's lycoris.kohya saved, or train without --dim_from_weights",
    )
    return True


def lora_builds_nothing(weights: Legacy, from_file: Legacy, paths, conv: Conversion) -> bool:
    """DBS402 for kohya's networks.lora with --dim_from_weights from a safetensors file here that holds no
    `lora_down` tensor (a LyCORIS LoHa / LoKr file, a full checkpoint): networks/lora.py
    create_network_from_weights takes each module's rank from its `lora_down` key alone, so `modules_dim` is
    empty and LoRANetwork builds no module; prepare_optimizer_params then returns no parameter group and
    kohya's optimizer raises ValueError (an empty parameter list). True when reported."""
    local = paths.local(weights.value)
    if local is None or not local.is_file():
        return False
    try:
        names = [n for n in read_weights_header(local) if n != "__metadata__"]
    except (ModelFileError, OSError):
        return False  # its readers report it (DBS401, or DBS402 for no safetensors file)
    if any("." in n and "lora_down" in n for n in names):
        return False
    held = f"`{names[0]}` and no `lora_down` tensor" if names else "no tensor"
    conv.invalid(
        from_file.key,
        True,
        from_file.source,
        "kohya's networks.lora create_network_from_weights takes each module's rank from its `lora_down` "
        f"tensor, and `{paths.name_of(weights.value)}` holds {held}: LoRANetwork builds no module and "
        "kohya's optimizer raises ValueError (an empty parameter list); a LyCORIS file (LoHa, LoKr) builds "
        "its network with network_module = lycoris.kohya",
        help="start from a LoRA file kohya's networks.lora saved, use --network_module lycoris.kohya for a "
        "LyCORIS file, or train without --dim_from_weights",
    )
    return True
