"""Stand-ins for modules kohya's library/train_util.py imports but the bucket and balancing code never calls.

For make_reference.py only (not installed in dbspec's environment). transformers and diffusers are imported
first so they settle "torchvision is not installed" before the torchvision stand-in exists.
"""

import importlib.machinery
import sys
import types

import diffusers  # noqa: F401
import transformers.utils.import_utils as import_utils

import_utils.is_torchvision_available()


class _Any:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Any()

    def __getattr__(self, name):
        return _Any()

    def __mro_entries__(self, bases):
        return (object,)


def _stub(name: str) -> None:
    module = types.ModuleType(name)

    def getattr_(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Any()

    module.__getattr__ = getattr_
    module.__path__ = []
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module


for _name in (
    "cv2",
    "einops",
    "toml",
    "voluptuous",
    "imagesize",
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
):
    try:
        __import__(_name)
    except ImportError:
        _stub(_name)

# renamed in transformers 5; set on the module object kohya's imports will find
sys.modules["transformers"].CLIPFeatureExtractor = sys.modules["transformers"].CLIPImageProcessor
