"""Record kohya-ss sd-scripts' SDXL U-Net (library/sdxl_original_unet.py SdxlUNet2DConditionModel, commit
48d368fa) as LyCORIS's kohya network sees it: each `named_modules()` entry's path, class name and layer kind
("linear", "conv1" for a 1x1 Conv2d, "conv" for a k x k one, "" for none), in order, built on the meta device.
Run in a scratch folder holding library/sdxl_original_unet.py (`git show
<commit>:library/sdxl_original_unet.py > library/sdxl_original_unet.py`), an empty library/__init__.py and a
library/utils.py defining a no-op `setup_logging`; it writes kohya_sdxl_unet_modules.json.gz for
tests/runtime/data."""

import gzip
import json

import torch
from torch import nn

from library.sdxl_original_unet import SdxlUNet2DConditionModel

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"


def kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv1" if module.kernel_size == (1, 1) else "conv"
    return ""


with torch.device("meta"):
    unet = SdxlUNet2DConditionModel()
rows = [[name, type(module).__name__, kind(module)] for name, module in unet.named_modules()]
text = json.dumps({"commit": COMMIT, "modules": rows}, indent=0)
with gzip.GzipFile("kohya_sdxl_unet_modules.json.gz", "wb", mtime=0) as handle:
    handle.write(text.encode("utf-8"))
