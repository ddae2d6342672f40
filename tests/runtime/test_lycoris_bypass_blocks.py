"""lycoris.kohya `bypass_mode` on a LoCon network whose preset file gives some SD layers Diag-OFT, BOFT,
IA^3 and DyLoRA (issue 12): their modules' bypass forward differs from their default one (the output rotated
or scaled, its bias included; DyLoRA's one block unscaled: tests/runtime/test_lycoris_bypass_kinds.py), which
the converted adapter's `bypass` gives those blocks (runtime/mixed_kinds.py kind_adapter). A tiny run resumes
bit-exact, and its export loaded into lycoris-lora 4.1.3's create_network(bypass_mode=True) gives the trained
U-Net's output, which the same weights without bypass_mode do not, and its adapter folders load back
(`dbspec sample`) to it (each kind's own folder: Diag-OFT's and BOFT's layers share their `lora_oft_*` keys,
runtime/weights.py _oft_fits). Entries' own bypass_mode over the network's (the BOFT and IA^3 entries' off
on a network in bypass_mode, resumed bit-exact; the Diag-OFT and DyLoRA entries' on on a network without it):
each block's `bypass` (runtime/mixed_kinds.py set_block_bypass) gives lycoris-lora's output, which the
entries' own flipped does not; on a DyLoRA network in bypass_mode the Diag-OFT entry's off, and on a GLoRA
network without it the Diag-OFT, BOFT and DyLoRA entries' on: was DBS403."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris import _unet_output
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    PRESETS,
    _converted_plan,
    pipe,
)

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# the transformers' MLPs Diag-OFT, their attention BOFT (kohya's U-Net class, which the converter reads, and
# diffusers', which lycoris-lora walks here), two ResNet 3x3 convolutions DyLoRA in one block of 4, the rest
# of the transformers (proj_in / proj_out) the network's LoCon
BYPASS_BLOCKS = """\
enable_conv = true
unet_target_module = ["Transformer2DModel"]
unet_target_name = ['down_blocks\\.1\\.resnets\\.0\\.conv[12]', 'down_blocks\\.0\\.resnets\\.0\\.conv1']
text_encoder_target_module = []
text_encoder_target_name = []

[module_algo_map.FeedForward]
algo = "diag-oft"
[module_algo_map.CrossAttention]
algo = "boft"
[module_algo_map.Attention]
algo = "boft"
[name_algo_map.'down_blocks\\.1\\.resnets\\.0\\.conv[12]']
algo = "dylora"
block_size = 4
[name_algo_map.'down_blocks\\.0\\.resnets\\.0\\.conv1']
algo = "ia3"
"""


# the entries' own bypass_mode (create_single_module hands it over the network's): the FeedForward Diag-OFT
# entry's, or the BOFT and IA^3 entries'
_OWN = {
    "DiagOFTModule": ('[module_algo_map.FeedForward]\nalgo = "diag-oft"\n',),
    "ButterflyOFTModule": (
        '[module_algo_map.CrossAttention]\nalgo = "boft"\n',
        '[module_algo_map.Attention]\nalgo = "boft"\n',
    ),
    "IA3Module": ("[name_algo_map.'down_blocks\\.0\\.resnets\\.0\\.conv1']\nalgo = \"ia3\"\n",),
    "DyLoraModule": ("[name_algo_map.'down_blocks\\.1\\.resnets\\.0\\.conv[12]']\nalgo = \"dylora\"\n",),
}


def _preset(own: dict[str, bool]) -> str:
    """BYPASS_BLOCKS whose entries of `own`'s LyCORIS classes give their layers that bypass_mode."""
    text = BYPASS_BLOCKS
    for name, value in own.items():
        for entry in _OWN[name]:
            assert entry in text, entry
            text = text.replace(entry, f"{entry}bypass_mode = {str(value).lower()}\n")
    return text


def _lycoris_unet(
    base, path: Path, monkeypatch, file: Path, bypass: bool, algo: str, own: dict[str, bool] | None = None
) -> nn.Module:
    """The base U-Net under lycoris-lora's create_network from the file (an `algo` network, dim 4, conv_dim
    4, DyLoRA's block_size 4, bypass_mode as given; `own`: the bypass_mode the preset's entries give modules
    of those classes), every module holding the export's tensors (its load_weights; DyLoraModule's one block
    copied from its `lora_down` / `lora_up`, which that load does not take)."""
    export = load_file(str(file))
    kept_lycoris_presets(monkeypatch)
    named, unet = nn.Module(), copy.deepcopy(base.unet)
    named.text_model = copy.deepcopy(base.text_encoder)
    made = lycoris_kohya.create_network(
        1.0,
        4,
        1.0,
        None,
        named,
        unet,
        algo=algo,
        conv_dim="4",
        block_size="4",
        preset=str(path),
        bypass_mode=str(bypass),
    )
    made.apply_to(named, unet, apply_text_encoder=False, apply_unet=True)
    state = made.load_weights(str(file))  # kohya's --network_weights load: all but DyLoRA's blocks
    assert all(k.endswith((".up_list.0", ".down_list.0")) for k in state.get("missing keys", [])), state
    assert all(k.endswith(("lora_up.weight", "lora_down.weight")) for k in state.get("unexpected keys", []))
    kinds = set()
    with torch.no_grad():
        for module in made.unet_loras:
            kinds.add(type(module).__name__)
            assert module.bypass_mode is (own or {}).get(type(module).__name__, bypass)
            if type(module).__name__ == "DyLoraModule":
                assert module.block_count == 1
                module.down_list[0].copy_(export[f"{module.lora_name}.lora_down.weight"].flatten(1))
                module.up_list[0].copy_(export[f"{module.lora_name}.lora_up.weight"].flatten(1))
    own = {"locon": "LoConModule", "dylora": "DyLoraModule", "glora": "GLoRAModule"}[algo]
    assert kinds == {own, "DiagOFTModule", "ButterflyOFTModule", "DyLoraModule", "IA3Module"}, kinds
    return unet.eval()


@pytest.mark.parametrize(
    "algo, network, own",
    [
        ("locon", True, {"ButterflyOFTModule": False, "IA3Module": False}),
        ("dylora", True, {"DiagOFTModule": False}),
        ("locon", False, {"DiagOFTModule": True, "DyLoraModule": True}),
        ("glora", False, {"DiagOFTModule": True, "ButterflyOFTModule": True, "DyLoraModule": True}),
    ],
    ids=["locon", "dylora-own-diag-oft", "locon-own-diag-oft", "glora-own"],
)
def test_bypass_blocks_train_resume_and_match_lycoris(pipe, tmp_path, monkeypatch, algo, network, own):  # noqa: F811
    """A LoCon network's Diag-OFT, BOFT and DyLoRA entries (the adapter's `bypass`), and a DyLoRA network's
    Diag-OFT and BOFT entries (its own `bypass`, one block per layer, which kind_adapter hands them). Entries'
    own bypass_mode over the network's (a block's `bypass`, runtime/mixed_kinds.py set_block_bypass): the
    BOFT and IA^3 entries' off on a LoCon network in bypass_mode, the Diag-OFT entry's on on one without; the
    Diag-OFT entry's off on the DyLoRA network (its own layers keep its bypass, loaded back too), a GLoRA
    network's Diag-OFT, BOFT and DyLoRA entries' on."""
    from dbspec.runtime.weights import load_peft_adapters
    from dbspec.runtime.tiny import build_pipeline
    from tests.unit.convert_kit import out_path

    PRESETS["bypass-blocks"] = _preset(own)
    args = '"bypass_mode=True" "block_size=4"' if network else '"block_size=4"'
    try:
        path, plan = _converted_plan(tmp_path, "bypass-blocks", algo, args)
    finally:
        del PRESETS["bypass-blocks"]
    a = plan.adapter
    assert a.kind == {"locon": "lora"}.get(algo, algo) and a.bypass is network
    kinds = ["boft", "diag-oft", "ia3"] if algo == "dylora" else ["boft", "diag-oft", "dylora", "ia3"]
    assert sorted(b.kind for b in a.blocks) == kinds
    name = {
        "diag-oft": "DiagOFTModule",
        "boft": "ButterflyOFTModule",
        "ia3": "IA3Module",
        "dylora": "DyLoraModule",
    }
    assert all(b.bypass is own.get(name.get(b.kind, ""), network) for b in a.blocks)  # settled per block
    spec = out_path(tmp_path)
    base = ["model.base=builtin:tiny-sd1", "schedule.steps=2", "train.text_encoder=false"]
    whole = execute(compile_spec(spec, [*base, "output.dir=whole"]), keep_models=True)
    (file,) = Path(whole.final).glob("*.kohya.safetensors")
    if algo == "locon" and network:  # (a GLoRA network's own entries resume on tiny-flux:
        # test_lycoris_mixed_flow_bypass.py) stopped after a step and resumed: the same losses and export
        split = compile_spec(spec, [*base, "output.dir=parts"])
        execute(split, stop_after=1)
        resumed = execute(split, resume=True)
        assert resumed.status == "finished" and resumed.losses == whole.losses[1:]
        (again,) = Path(resumed.final).glob("*.kohya.safetensors")
        export, again = load_file(str(file)), load_file(str(again))
        assert export.keys() == again.keys() and all(torch.equal(export[k], again[k]) for k in export)

    trained = _unet_output(whole.components.unet.eval())
    assert not torch.allclose(_unet_output(pipe.unet), trained, atol=1e-3)  # training moved it
    theirs = _unet_output(_lycoris_unet(pipe, path, monkeypatch, file, network, algo, own))
    torch.testing.assert_close(theirs, trained, rtol=1e-4, atol=1e-4)
    # without bypass_mode the same tensors give another output: the bypass forward is not inert here; nor
    # are the entries' own: flipped (but DyLoRA's, whose default forward scales its drawn blocks otherwise
    # than the saved file: LyCORIS's DyLoraModule at alpha / (b + 1)), the same network's output differs too
    flipped = {k: v if k == "DyLoraModule" else not v for k, v in own.items()}
    for name, given, bypass in (("plain", {}, False), ("flipped", flipped, network)):
        if name == "flipped" and not own:
            continue
        (tmp_path / f"{name}.toml").write_text(_preset(given), encoding="utf-8")
        other = _lycoris_unet(pipe, tmp_path / f"{name}.toml", monkeypatch, file, bypass, algo, given)
        other = _unet_output(other)
        assert (other - trained).abs().max() > 1e-3, name
    # the adapter folders load back (`dbspec sample`) in the bypass forward, each block's layers in its own
    fresh = build_pipeline("builtin:tiny-sd1").unet
    assert load_peft_adapters(Path(whole.final), {"unet": fresh}, True, a.bypass, blocks=a) == ["unet"]
    torch.testing.assert_close(_unet_output(fresh.eval()), trained, rtol=1e-5, atol=1e-5)
