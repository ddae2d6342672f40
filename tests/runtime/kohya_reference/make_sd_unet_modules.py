"""Record kohya-ss sd-scripts' SD 1.x / 2.x U-Net (library/original_unet.py UNet2DConditionModel, commit
48d368fa), which train_network.py trains (a diffusers model is converted to it), as LyCORIS's kohya network
sees it: each `named_modules()` entry's path, class name and layer kind ("linear", "conv1" for a 1x1 Conv2d,
"conv" for a k x k one, "" for none), in order, built on the meta device with SD 1.5's and SD 2.1's configs.
Run in a scratch folder holding library/original_unet.py (`git show <commit>:library/original_unet.py >
library/original_unet.py`), an empty library/__init__.py and a library/utils.py defining a no-op
`setup_logging`; it writes kohya_sd_unet_modules.json.gz for tests/runtime/data."""

import gzip
import json

import torch
from torch import nn

from library.original_unet import UNet2DConditionModel

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"


def kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv1" if module.kernel_size == (1, 1) else "conv"
    return ""


def rows(unet: nn.Module) -> list[list[str]]:
    return [[name, type(module).__name__, kind(module)] for name, module in unet.named_modules()]


with torch.device(
    "meta"
):  # train_util._load_target_model: sample_size, heads, cross dim, linear proj, upcast
    sd1 = UNet2DConditionModel(64, 8, 768, False, False)
    sd2 = UNet2DConditionModel(96, [5, 10, 20, 20], 1024, True, False)
text = json.dumps({"commit": COMMIT, "sd1": rows(sd1), "sd2": rows(sd2)}, indent=0)
with gzip.GzipFile("kohya_sd_unet_modules.json.gz", "wb", mtime=0) as handle:
    handle.write(text.encode("utf-8"))
