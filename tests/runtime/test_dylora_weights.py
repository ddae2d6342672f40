"""DyLoRA started from a kohya LoRA file (issue 12), on a tiny SD run's kohya export:

- kohya networks.dylora with --dim_from_weights (networks/dylora.py create_network_from_weights: one
  DyLoRAModule per module of the file at its own rank and alpha, none elsewhere, unit 1; load_weights then
  loads the file): the converter's blocks (dbspec/convert/kohya/dylora.py kohya_dylora_from_weights, through
  file_ranks.sd_blocks) give each DyLoRA layer the file's rank, alpha and tensors, the dropped module none;
- LyCORIS algo=dylora with --network_weights (only each layer's alpha buffer loads: DyLoraModule's weights
  are up_list / down_list): the converter's blocks (lycoris_dylora_alphas) give the file's layers the file's
  alpha at the network's rank, from a fresh init.

Both train and resume bit-exact."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dbspec.compiler.lora_file import read_lora_file
from dbspec.convert.common.core import Conversion
from dbspec.convert.common.paths import PathMapper
from dbspec.convert.kohya.dylora import lycoris_dylora_alphas
from dbspec.convert.kohya.file_ranks import per_module_text_blocks, sd_blocks
from dbspec.runtime.dylora import DyloraLayer
from dbspec.runtime.families import family_runtime
from dbspec.runtime.init_weights import load_init_weights
from dbspec.runtime.prepare import configure_models
from tests.runtime.runspec import assert_lora_resumes_bit_exact, compile_spec, write_spec
from tests.runtime.test_init_weights import _first_export


def _per_module_file(export: Path) -> tuple[Path, str, str]:
    """The export with one denoiser module cut to rank 1 at alpha 0.5 and another dropped."""
    state = load_file(str(export))
    unet = sorted({k.split(".")[0] for k in state if k.startswith("lora_unet_")})
    cut, dropped = unet[0], unet[1]
    state[f"{cut}.lora_down.weight"] = state[f"{cut}.lora_down.weight"][:1].clone()
    state[f"{cut}.lora_up.weight"] = state[f"{cut}.lora_up.weight"][:, :1].clone()
    state[f"{cut}.alpha"] = torch.tensor(0.5)
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        state.pop(dropped + suffix, None)
    path = export.with_name("per-module.safetensors")
    save_file(state, str(path))
    return path, cut, dropped


def _tables(name: str, blocks: list[dict]) -> str:
    text = ""
    for block in blocks:
        text += f"\n[[adapter.{name}]]\n" + "".join(
            f"{k} = '{v}'\n" if k == "pattern" else f"{k} = {v}\n" for k, v in block.items()
        )
    return text


def _dylora_layers(module: torch.nn.Module) -> dict[str, DyloraLayer]:
    return {n: m for n, m in module.named_modules() if isinstance(m, DyloraLayer) and "default" in m.r}


# --- kohya networks.dylora --dim_from_weights ---


def _from_weights_spec(tmp_path: Path, path: Path, steps: int) -> Path:
    file = read_lora_file(path)
    text = f'[adapter]\nkind = "dylora"\nunit = 1\nrank = 2\nalpha = 1.0\ninit_weights = "{path}"\n'
    text += "init_partial = true\n"
    text += _tables("blocks", sd_blocks(file)) + _tables("text_encoder_blocks", per_module_text_blocks(file))
    text += '\n[train]\ntext_encoder = true\n\n[checkpoints]\nevery = 2\nexports = ["kohya_lora"]\n'
    return write_spec(tmp_path / "second", steps=steps, extra=text)


def test_dim_from_weights_builds_each_dylora_layer_at_its_file_rank(tmp_path):
    """Also networks.dylora without --dim_from_weights from a file saved at another alpha (4): with
    adapter.init_alpha = "ignore" every layer keeps the adapter's alpha (DyLoRAModule's scale is fixed from
    network_alpha when it is built; load_weights only fills its alpha buffer) and holds the file's rows."""
    export = _first_export(tmp_path)
    path, cut, dropped = _per_module_file(export)
    plan = compile_spec(_from_weights_spec(tmp_path, path, 2), ["optimizer.lr=1e-2"])
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    saved = load_file(str(path))
    assert load_init_weights(plan, comps.unet, comps.text_encoders) == len({k.split(".")[0] for k in saved})
    layers = {"lora_unet_" + n.replace(".", "_"): m for n, m in _dylora_layers(comps.unet).items()}
    assert dropped not in layers and len(layers) == len({k.split(".")[0] for k in saved if "unet" in k})
    layer = layers[cut]
    assert (layer.r["default"], layer.lora_alpha["default"], layer.blocks("default")) == (1, 0.5, 1)
    down, up = layer.full("default")
    assert torch.equal(down.detach(), saved[f"{cut}.lora_down.weight"].float())
    assert torch.equal(up.detach(), saved[f"{cut}.lora_up.weight"].float())
    other = next(n for n in layers if n != cut)
    assert (layers[other].r["default"], layers[other].blocks("default")) == (2, 2)  # unit 1: one per rank

    state = {k: torch.tensor(4.0) if k.endswith(".alpha") else v for k, v in load_file(str(export)).items()}
    save_file(state, str(tmp_path / "alpha4.safetensors"))
    text = '[adapter]\nkind = "dylora"\nunit = 1\nrank = 2\nalpha = 1.0\ninit_alpha = "ignore"\n'
    text += f'init_weights = "{tmp_path / "alpha4.safetensors"}"\n\n[train]\ntext_encoder = true\n'
    plan = compile_spec(write_spec(tmp_path / "third", steps=1, extra=text), [])
    assert (plan.adapter.alpha, plan.adapter.init_alpha) == (1.0, "ignore")
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    assert load_init_weights(plan, comps.unet, comps.text_encoders) == len({k.split(".")[0] for k in state})
    layers = {"lora_unet_" + n.replace(".", "_"): m for n, m in _dylora_layers(comps.unet).items()}
    assert layers and {m.lora_alpha["default"] for m in layers.values()} == {1.0}
    for key, layer in layers.items():
        down, up = layer.full("default")
        assert torch.equal(down.detach(), state[f"{key}.lora_down.weight"].float()), key
        assert torch.equal(up.detach(), state[f"{key}.lora_up.weight"].float()), key


def test_a_dim_from_weights_dylora_resumes_bit_exact(tmp_path):
    path, cut, dropped = _per_module_file(_first_export(tmp_path))
    assert_lora_resumes_bit_exact(_from_weights_spec(tmp_path, path, 4))
    (export,) = (tmp_path / "second").glob("whole/**/final/*.kohya.safetensors")
    saved, trained = load_file(str(path)), load_file(str(export))
    assert trained.keys() == saved.keys()  # the file's modules, none other (kohya saves the same)
    assert trained[f"{cut}.lora_down.weight"].shape[0] == 1 and float(trained[f"{cut}.alpha"]) == 0.5


# --- LyCORIS algo=dylora --network_weights: the file's alphas only ---


def _alphas_spec(tmp_path: Path, path: Path, steps: int) -> Path:
    conv = Conversion(tool="kohya")
    conv.put(("adapter", "rank"), 4, "")
    conv.put(("adapter", "alpha"), 2.0, "")  # the export's alphas are 1.0
    from dbspec.convert.common.core import Legacy

    weights = Legacy(key="network_weights", value=str(path), source="cli")
    lycoris_dylora_alphas(weights, PathMapper(cwd=tmp_path, out_dir=tmp_path), conv, False)
    blocks: dict[tuple[str, int], dict] = {}
    for key, (value, _) in conv.values.items():
        if key[:2] == ("adapter", "blocks") or key[:2] == ("adapter", "text_encoder_blocks"):
            blocks.setdefault((key[1], key[2]), {})[key[3]] = value
    text = '[adapter]\nkind = "dylora"\ndylora_form = "lycoris"\nunit = 2\nrank = 4\nalpha = 2.0\n'
    for (name, _), block in sorted(blocks.items()):
        text += _tables(name, [block])
    text += "\n[train]\ntext_encoder = true\n\n[checkpoints]\nevery = 2\n"
    return write_spec(tmp_path / "second", steps=steps, extra=text)


def test_lycoris_dylora_takes_the_files_alphas_and_a_fresh_init(tmp_path):
    path, cut, dropped = _per_module_file(_first_export(tmp_path))
    plan = compile_spec(_alphas_spec(tmp_path, path, 2), ["optimizer.lr=1e-2"])
    assert plan.adapter.init_weights == "" and plan.adapter.blocks
    comps = family_runtime(plan.model.family).load(plan)
    configure_models(plan, comps, torch.device("cpu"))
    saved = load_file(str(path))
    unet = {"lora_unet_" + n.replace(".", "_"): m for n, m in _dylora_layers(comps.unet).items()}
    (text,) = comps.text_encoders
    te = {  # kohya's CLIP names carry text_model
        "lora_te_" + ("" if n.startswith("text_model.") else "text_model_") + n.replace(".", "_"): m
        for n, m in _dylora_layers(text).items()
    }
    for name, layer in {**unet, **te}.items():
        # the network's rank everywhere; the file's alpha where it has one, the network's elsewhere
        alpha = float(saved[f"{name}.alpha"]) if f"{name}.alpha" in saved else 2.0
        assert (layer.r["default"], layer.lora_alpha["default"]) == (4, alpha), name
        assert all(not u.any() for u in layer.lora_dylora_up["default"])  # fresh: ups zero
    assert unet[cut].lora_alpha["default"] == 0.5 and unet[dropped].lora_alpha["default"] == 2.0
    assert te and all(m.lora_alpha["default"] == 1.0 for m in te.values())  # the export's text encoder


def test_a_lycoris_dylora_with_the_files_alphas_resumes_bit_exact(tmp_path):
    path, _, _ = _per_module_file(_first_export(tmp_path))
    assert_lora_resumes_bit_exact(_alphas_spec(tmp_path, path, 4))


def test_lycorises_dylora_layer_at_a_loaded_alpha_of_zero_changes_nothing_and_gets_no_gradient():
    """lycoris-lora 4.1.3's DyLoraModule built at alpha 4, its alpha buffer then loaded as 0 from a file
    (load_state_dict(strict=False), as LycorisNetworkKohya.load_weights): the training forward is the base
    layer's and every up / down block's gradient is exactly 0, so lora_up keeps its zero init and the layer
    adds nothing to the clip norm, whatever the drawn block: the converter builds no layer there (rank 0,
    dbspec/convert/kohya/dylora.py file_alpha). Its bypass forward never reads the alpha."""
    from lycoris.modules.dylora import DyLoraModule

    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10)
    module = DyLoraModule("lora_unet_x", base, lora_dim=8, alpha=4, block_size=2)
    module.apply_to()
    for up in module.up_list:  # a trained-looking layer: the zero-init ups moved
        torch.nn.init.normal_(up)
    torch.nn.Module.load_state_dict(module, {"alpha": torch.tensor(0.0)}, strict=False)
    assert float(module.alpha) == 0.0
    x = torch.randn(3, 12)
    plain = torch.nn.functional.linear(x, base.weight, base.bias)  # apply_to routes base's forward to it
    module.train()
    for _ in range(6):  # several random block draws
        out = module(x)
        assert torch.equal(out, plain)
        out.square().sum().backward()
        grads = [p.grad for p in (*module.up_list, *module.down_list) if p.grad is not None]
        assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
        module.zero_grad()
    # bypass_mode (one block per layer): the update up(down(x)) whatever the loaded alpha, 0 or the rank
    outputs = []
    for alpha in (0.0, 8.0):
        torch.manual_seed(1)
        layer = torch.nn.Linear(12, 10)
        bypass = DyLoraModule("lora_unet_y", layer, lora_dim=8, alpha=4, block_size=8, bypass_mode=True)
        bypass.apply_to()
        torch.nn.init.normal_(bypass.up_list[0])
        torch.nn.Module.load_state_dict(bypass, {"alpha": torch.tensor(alpha)}, strict=False)
        bypass.train()
        outputs.append(bypass(x))
        own = torch.nn.functional.linear(x, layer.weight, layer.bias)
        assert not torch.allclose(outputs[-1], own)  # the update applies
    assert torch.equal(outputs[0], outputs[1])
    # built at alpha 0 (or an integer alpha) the buffer is int64: a file's alpha loads truncated toward zero
    # (dbspec/convert/kohya/dylora.py, dylora_preset_alphas.py int_buffer)
    for built, loaded, held in ((0, 2.5, 2), (3, 0.5, 0), (3.0, 0.5, 0.5)):
        made = DyLoraModule("lora_unet_z", torch.nn.Linear(12, 10), lora_dim=8, alpha=built, block_size=2)
        torch.nn.Module.load_state_dict(made, {"alpha": torch.tensor(loaded)}, strict=False)
        assert float(made.alpha) == held


def test_a_layer_scaled_by_zero_draws_module_dropout_as_lycoris(tmp_path):
    """A file's alpha 0 with module_dropout (was DBS403): lycoris-lora 4.1.3's DyLoraModule, its alpha buffer
    loaded as 0, still draws torch.rand(1) in every training forward and then adds nothing; dbspec's layer
    of a `zero_scale` block (built at its rank, alpha 0) draws the same, its output the base's and its
    gradients 0, so torch's generator stays where LyCORIS leaves it. A plan's zero_scale block builds such
    layers there and only there, and the export saves their alpha 0."""
    from lycoris.modules.dylora import DyLoraModule

    from dbspec.runtime.adapters import add_lora
    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.tiny import build_pipeline
    from tests.runtime.runspec import compile_spec, write_spec

    torch.manual_seed(0)
    base, ours_base = torch.nn.Linear(12, 10), torch.nn.Linear(12, 10)
    ours_base.load_state_dict(base.state_dict())
    module = DyLoraModule("lora_unet_x", base, lora_dim=4, alpha=4, block_size=4, module_dropout=0.5)
    module.apply_to()
    torch.nn.init.normal_(module.up_list[0])
    torch.nn.Module.load_state_dict(module, {"alpha": torch.tensor(0.0)}, strict=False)
    ours = DyloraLayer(
        ours_base, "default", r=4, lora_alpha=4.0, unit=4, form="lycoris", module_dropout=0.5, zero_scale=True
    )
    torch.nn.init.normal_(ours.lora_dylora_up["default"][0])
    assert ours.lora_alpha["default"] == 0.0 and ours.scaling["default"] == 0.0
    x = torch.randn(3, 12)
    plain = torch.nn.functional.linear(x, ours_base.weight, ours_base.bias)
    module.train(), ours.train()
    ours.drawn["default"] = 0  # the one block (runtime/loop.py draws it before each micro-batch)
    states = []
    for layer in (module, ours):
        torch.manual_seed(7)
        for _ in range(5):
            out = layer(x)
            assert torch.equal(out, plain)
            out.square().sum().backward()
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1])  # five draws each
    torch.manual_seed(7)
    assert not torch.equal(torch.get_rng_state(), states[1])  # the draws moved it
    grads = [p.grad for n, p in ours.named_parameters() if "dylora" in n]
    assert grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads)

    block = '[[adapter.blocks]]\npattern = "attn1\\\\.to_q$"\nrank = 4\nalpha = 0.0\nzero_scale = true\n'
    text = '[adapter]\nkind = "dylora"\ndylora_form = "lycoris"\nunit = 4\nrank = 4\nalpha = 2.0\n'
    plan = compile_spec(write_spec(tmp_path, steps=1, extra=text + "module_dropout = 0.5\n" + block))
    assert plan.adapter.blocks[0].zero_scale
    unet = build_pipeline("builtin:tiny-sd1").unet
    add_lora(unet, plan.adapter, plan.adapter.denoiser_targets, seed=0, conv=True)
    layers = {n: m for n, m in unet.named_modules() if isinstance(m, DyloraLayer)}
    zeroed = {n for n, m in layers.items() if m.lora_alpha["default"] == 0.0}
    assert zeroed and zeroed == {n for n in layers if n.endswith("attn1.to_q")}
    assert all(m.lora_alpha["default"] == 2.0 for n, m in layers.items() if n not in zeroed)
    from dbspec.runtime.lycoris_export import lycoris_state

    saved = lycoris_state(unet=unet, text_encoders=[], family="sd1", dtype="fp32")
    alphas = {k: float(v) for k, v in saved.items() if k.endswith(".alpha")}
    assert alphas and all((v == 0.0) == k.endswith("attn1_to_q.alpha") for k, v in alphas.items())
