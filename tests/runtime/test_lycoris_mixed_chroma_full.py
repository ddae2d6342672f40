"""LyCORIS preset files giving Chroma layers LyCORIS's full, IA^3, Diag-OFT or GLoRA algo beside a LoCon
network's layers (issue 12), as on Flux (test_lycoris_mixed_flow_full.py): Chroma's blocks are Flux's fused
Linears (chroma_rows.py), so a fused q/k/v or linear1 is one FullModule / IA3Module / DiagOFTModule /
GLoRAModule over its stacked parts. A tiny Chroma run of each file trains and resumes bit-exact, and its kohya
export, on kohya's Chroma layers rebuilt from the trained parts (the base weights stacked in kohya's row
order), is what lycoris-lora 4.1.3's create_network builds from the same preset file (every layer's class,
its module names, its state loaded strictly), each module computing the trained layers' outputs; the adapter
folders load back as `dbspec sample` loads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts
from tests.runtime.test_lycoris_mixed_flow import _path_in
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    _CLASS,
    _base,
    _check_kohya_outputs,
    _kohya_layers,
    _kohya_tree,
    _lycoris_network,
    _run,
    _trained,
)
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# QKV on the double blocks' image q/k/v and full on txt_in, LINEAR1 on the single blocks' linear1 and IA^3 on
# the approximator's in_proj, LoHa on the text stream's q/k/v, the network's LoCon on the rest
CHROMA_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "txt_in",
    "distilled_guidance_layer.in_proj"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "QKV"
[name_algo_map."single_blocks.*.linear1"]
algo = "LINEAR1"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "loha"
dim = 2
alpha = 1
[name_algo_map.txt_in]
algo = "full"
[name_algo_map."distilled_guidance_layer.in_proj"]
algo = "ia3"
"""


def _converted(tmp_path: Path, file: str, overrides):
    from tests.unit.convert_kit import component_file, errors, images, kohya, plan_of

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("Chroma1-HD.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "Chroma1-HD.safetensors --model_type chroma --t5xxl t5xxl.safetensors --ae ae.safetensors "
        "--apply_t5_attn_mask --train_data_dir=x --resolution=64 --network_module=lycoris.kohya "
        f'--network_dim=4 --network_alpha=1 --network_args "algo=locon" "preset={file}" '
        "--learning_rate=1e-2 --max_train_steps=2 --save_model_as=safetensors --output_dir=out "
        "--timestep_sampling sigmoid --model_prediction_type raw --guidance_scale 0.0",
    )
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}, errors(outcome)
    return plan_of(outcome, tmp_path, overrides)


def check_chroma_export(
    monkeypatch, algo: str, file: Path, planned, whole, layers, tensors, expected
) -> None:
    """A Chroma run's export (`tensors`) against lycoris-lora's network (`algo`, the preset `file`) on kohya's
    layers: exactly the `expected` {kohya path: LyCORIS class} modules, the trained layers' outputs; and its
    adapter folders reloaded as `dbspec sample` loads them, each fused layer's parts computing as trained."""
    from dbspec.runtime.weights import load_peft_adapters

    names = {k.split(".")[0] for k in tensors}
    unet = whole.components.unet
    # lycoris-lora's network from the same preset file on kohya's Chroma layers, the export loaded into it
    tree = _kohya_tree(layers)
    theirs = _lycoris_network(monkeypatch, algo, file, [nn.Module(), nn.Module()], tree, tensors)
    assert set(theirs) == names == {"lora_unet_" + p.replace(".", "_") for p in expected}
    for path, cls in expected.items():
        assert type(theirs["lora_unet_" + path.replace(".", "_")]).__name__ == cls, path
    _check_kohya_outputs(tree, layers, names)

    # the adapter folders (`unet/` and `unet/<kind>/`) on the plain transformer, as `dbspec sample` loads them
    again = _unwrapped(unet)
    for attr in ("peft_config", "dbspec_kind_configs"):
        if hasattr(again, attr):
            delattr(again, attr)
    a = planned.adapter
    assert load_peft_adapters(Path(whole.final), {"unet": again}, a.lokr_unit_scale, fused_lokr=a) == ["unet"]
    with torch.no_grad():
        for parts, _ in layers.values():
            reloaded = [again.get_submodule(_path_in(unet, p)) for p in parts]
            x = torch.randn(3, _base(parts[0]).in_features)
            torch.testing.assert_close(
                torch.cat([p(x) for p in reloaded], dim=-1), _trained(parts, None, x)[0], rtol=0, atol=1e-5
            )


@pytest.mark.parametrize(("qkv", "linear1"), [("full", "ia3"), ("diag-oft", "glora")])
def test_lycoris_kinds_on_chroma_fused_layers_train_resume_and_load_in_lycoris(
    tmp_path, monkeypatch, qkv, linear1
):

    file = tmp_path / "mixed.toml"
    file.write_text(CHROMA_FILE.replace("QKV", qkv).replace("LINEAR1", linear1), encoding="utf-8")
    base = ["model.base=builtin:tiny-chroma", 'model.denoiser_file=""', *_BASE]
    plan = _converted(tmp_path, file.name, base)
    assert plan.model.family == "chroma" and plan.adapter.kind == "lora"
    kinds = {"full", "ia3", qkv, linear1, "loha"}
    assert {b.kind for b in plan.adapter.blocks} == kinds
    planned, whole, tensors = _run(tmp_path, kinds, base)
    names = {k.split(".")[0] for k in tensors}
    assert not any("to_q" in n or "proj_mlp" in n or "context_embedder" in n for n in names)  # kohya's names

    unet = whole.components.unet.eval()
    depth = len(unet.distilled_guidance_layer.layers)
    layers = _kohya_layers(unet, chroma_model(1, 1, depth), chroma_parts)
    expected = {
        "double_blocks.0.img_attn.qkv": _CLASS[qkv],
        "txt_in": "FullModule",
        "single_blocks.0.linear1": _CLASS[linear1],
        "distilled_guidance_layer.in_proj": "IA3Module",
        "double_blocks.0.txt_attn.qkv": "LohaModule",
        "double_blocks.0.img_attn.proj": "LoConModule",
        "double_blocks.0.txt_attn.proj": "LoConModule",
        "single_blocks.0.linear2": "LoConModule",
    }

    check_chroma_export(monkeypatch, "locon", file, planned, whole, layers, tensors, expected)
