"""LyCORIS's DoRA variants peft cannot train, converted exactly (issue 12): `dora_wd` on LoHa and LoKr,
`wd_on_output = False` (one magnitude per input column) and `use_tucker` with `dora_wd` on LoCon. Each case is
a realistic kohya config for `network_module = "lycoris.kohya"`; the expectation is what LyCORIS's
create_network (lycoris/kohya.py, 4.x) reads: `dora_wd` and `wd_on_output` through its str_bool (only "false",
any case, is off), `wd_on_output` defaulting to True, both handed to every module the algo builds."""

from __future__ import annotations

import pytest

from convert_kit import (
    SD15,
    SDXL,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    fate,
    images,
    kohya,
    plan_of,
    write,
)

CONFIG = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "{resolution}"
output_dir = "out"
network_module = "lycoris.kohya"
network_dim = {dim}
network_alpha = {alpha}
network_args = [{args}]
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = 5e-5
optimizer_type = "AdamW8bit"
lr_scheduler = "cosine"
max_train_steps = 1500
mixed_precision = "bf16"
save_precision = "fp16"
save_model_as = "safetensors"
gradient_checkpointing = true
cache_latents = true
{extra}"""


def _convert(tmp_path, args: str, *, model=SD15, dim=16, alpha=8, extra="", script="train_network.py"):
    resolution = "1024,1024" if model == SDXL else "512,512"
    images(tmp_path / "img" / "10_ohwx dog", 2, (512, 512))
    config = CONFIG.format(model=model, resolution=resolution, dim=dim, alpha=alpha, args=args, extra=extra)
    write(tmp_path / "cfg.toml", config)
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command=f"accelerate launch {script}")


# (network_args, kind, tucker, dora_axis) — the LyCORIS module each network builds with weight_decompose=True
CASES = {
    "doha": (
        '"algo=loha", "preset=full", "conv_dim=8", "conv_alpha=4", "dora_wd=True"',
        "loha",
        False,
        "output",
    ),
    "dokr": (
        '"algo=lokr", "factor=8", "conv_dim=10000", "conv_alpha=1", "dora_wd=True"',
        "lokr",
        False,
        "output",
    ),
    "dokr_input": ('"algo=lokr", "factor=4", "dora_wd=true", "wd_on_output=False"', "lokr", False, "input"),
    "dora_input": (
        '"algo=locon", "conv_dim=8", "conv_alpha=4", "dora_wd=True", "wd_on_output=false"',
        "lora",
        False,
        "input",
    ),
    "locon_tucker_dora": (
        '"algo=locon", "conv_dim=8", "conv_alpha=4", "dora_wd=True", "use_tucker=True"',
        "lora",
        True,
        "output",
    ),
    "doha_tucker_input": (
        '"algo=loha", "conv_dim=4", "conv_alpha=2", "dora_wd=True", "use_tucker=True", "wd_on_output=False"',
        "loha",
        True,
        "input",
    ),
    # LoCon per output row: LyCORIS's weight decomposition (its norm differentiated), not peft's DoRA
    "locon_dora": ('"algo=locon", "conv_dim=8", "conv_alpha=4", "dora_wd=True"', "lora", False, "output"),
    "lora_dora_linears": ('"algo=lora", "preset=attn-mlp", "dora_wd=True"', "lora", False, "output"),
    # LyCORIS's str_bool: "0" is true, so wd_on_output=0 keeps the magnitude per output row
    "wd_on_output_zero": ('"algo=loha", "dora_wd=True", "wd_on_output=0"', "loha", False, "output"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_dora_variants_convert_exactly(tmp_path, case):
    args, kind, tucker, axis = CASES[case]
    outcome = _convert(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "network_args") == "mapped"
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.dora, a.dora_axis, a.tucker, a.dora_form) == (kind, True, axis, tucker, "lycoris")
    assert (a.rank, a.alpha) == (16, 8.0)
    spec = outcome.text
    assert "dora = true" in spec
    assert ('dora_axis = "input"' in spec) == (axis == "input")


def test_sdxl_loha_dora_with_lycoris_dropouts(tmp_path):
    """A LoHa DoRA SDXL recipe: LyCORIS's rank and module dropout carry over (its modules apply them with the
    weight decomposition too); network_dropout is not applied (LyCORIS's dropout acts in bypass mode only)."""
    outcome = _convert(
        tmp_path,
        '"algo=loha", "conv_dim=4", "conv_alpha=1", "dora_wd=True", "rank_dropout=0.1", "module_dropout=0.1"',
        model=SDXL,
        dim=8,
        alpha=4,
        extra="network_dropout = 0.1\nnetwork_train_unet_only = true\n",
        script="sdxl_train_network.py",
    )
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_axis, a.rank_dropout, a.module_dropout) == (
        "loha",
        True,
        "output",
        0.1,
        0.1,
    )
    assert fate(outcome, "network_dropout") == "inert"


def test_wd_on_output_false_on_locon_dora_ignores_network_dropout(tmp_path):
    """LyCORIS's LoCon with dora_wd ignores network_dropout: the converted spec has no adapter.dropout (which
    the compiler refuses with LyCORIS's weight decomposition, DBS515)."""
    outcome = _convert(
        tmp_path,
        '"algo=locon", "dora_wd=True", "wd_on_output=False"',
        extra="network_dropout = 0.1\n",
    )
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_axis, a.dropout) == ("lora", True, "input", 0.0)


def test_wd_on_output_without_dora_leaves_the_axis_default(tmp_path):
    outcome = _convert(tmp_path, '"algo=lokr", "wd_on_output=False"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_axis) == (False, "output")
    assert "dora_axis" not in outcome.text


@pytest.mark.parametrize(
    ("model", "script", "module", "width"),
    [
        (
            SD15,
            "train_network.py",
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            320,
        ),
        (SDXL, "sdxl_train_network.py", "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", 640),
    ],
)
def test_network_weights_of_a_locon_with_dora_wd_start_the_magnitudes_on_sd(
    tmp_path, model, script, module, width
):
    """--network_weights with algo=locon dora_wd=True on SD 1.x / SDXL: LyCORIS's load_weights
    (load_state_dict, strict=False) fills each LoConModule's lora_down / lora_up and its dora_scale as it is
    (one magnitude per output row): init_weights with init_partial, the magnitudes loaded by
    runtime/init_weights.py (tests/runtime/test_lycoris_sd_dora_file.py against lycoris-lora)."""
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {
        f"{module}.lora_down.weight": np.zeros((16, width), np.float16),
        f"{module}.lora_up.weight": np.zeros((width, 16), np.float16),
        f"{module}.alpha": np.array(8.0, np.float32),
        f"{module}.dora_scale": np.ones((width, 1), np.float16),
    }
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _convert(
        tmp_path,
        '"algo=locon", "dora_wd=True"',
        model=model,
        extra='network_weights = "prev.safetensors"\n',
        script=script,
    )
    assert outcome.exit_code == 0 and fate(outcome, "network_weights") == "mapped", errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_form, a.init_partial, a.init_layers) == ("lora", True, "lycoris", True, 1)
    assert a.init_weights.endswith("prev.safetensors")


def test_dim_from_weights_locon_file_with_dora_scale(tmp_path):
    """--dim_from_weights with a LyCORIS LoCon file holding `dora_scale` (SD 1.x): create_network_from_weights
    builds each module holding one with weight_decompose (make_module_from_state_dict): in every module
    `dora = true`, in some only their blocks' (a CLIP module's too) `dora = "on"`, dora_form "lycoris" (was
    DBS403: the file was read as kohya's plain LoRA layout; runtime: test_lycoris_sd_dora_file)."""
    import re

    import numpy as np
    from safetensors.numpy import save_file

    block = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_"
    modules = {
        f"{block}attn1_to_q": (320, 320),
        f"{block}attn1_to_k": (320, 320),
        "lora_te_text_model_encoder_layers_0_mlp_fc1": (3072, 768),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
    }

    def write(held):
        tensors = {}
        for name, (out, inp) in modules.items():
            tensors[f"{name}.lora_down.weight"] = np.zeros((8, inp), np.float16)
            tensors[f"{name}.lora_up.weight"] = np.zeros((out, 8), np.float16)
            tensors[f"{name}.alpha"] = np.array(4.0, np.float32)
            if name in held:
                tensors[f"{name}.dora_scale"] = np.ones((out, 1), np.float16)
        save_file(tensors, str(tmp_path / "prev.safetensors"))

    extra = 'network_weights = "prev.safetensors"\ndim_from_weights = true\n'
    write(set(modules))
    outcome = _convert(tmp_path, '"algo=locon"', extra=extra)
    assert outcome.exit_code == 0 and fate(outcome, "dim_from_weights") == "mapped", errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.dora, a.dora_form, a.init_partial) == ("lora", 8, True, "lycoris", True)
    write({f"{block}attn1_to_q", "lora_te_text_model_encoder_layers_0_mlp_fc1"})
    outcome = _convert(tmp_path, '"algo=locon"', extra=extra)
    assert outcome.exit_code == 0 and fate(outcome, "dim_from_weights") == "mapped", errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_form) == (False, "lycoris")
    (own,) = [b for b in a.blocks if b.dora == "on"]
    assert re.search(own.pattern, "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
    assert not re.search(own.pattern, "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k")
    (text,) = [b for b in a.text_encoder_blocks if b.dora == "on"]
    assert re.search(text.pattern, "text_encoder.text_model.encoder.layers.0.mlp.fc1")
    assert not re.search(text.pattern, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj")


FC1 = "lora_te_text_model_encoder_layers_0_mlp_fc1"  # CLIP-L's fc1: 768 -> 3072


def _dora_file(path, algo: str, per_output: bool):
    """A lycoris.kohya file of one CLIP fc1 module (768 -> 3072, rank 16, alpha 8: the network's) whose
    dora_scale is LyCORIS's wd_on_out=True shape (3072, 1) or its wd_on_out=False shape (1, 768)."""
    import numpy as np
    from safetensors.numpy import save_file

    out, inp = 3072, 768
    if algo == "locon":
        factors = {"lora_down.weight": (16, inp), "lora_up.weight": (out, 16)}
    elif algo == "loha":
        factors = {
            "hada_w1_a": (out, 16),
            "hada_w1_b": (16, inp),
            "hada_w2_a": (out, 16),
            "hada_w2_b": (16, inp),
        }
    else:  # LoKr: (out, in) = (16 x 192, 8 x 96)
        factors = {"lokr_w1": (16, 8), "lokr_w2_a": (192, 16), "lokr_w2_b": (16, 96)}
    tensors = {f"{FC1}.{k}": np.zeros(shape, np.float16) for k, shape in factors.items()}
    tensors[f"{FC1}.alpha"] = np.array(8.0, np.float32)
    tensors[f"{FC1}.dora_scale"] = np.ones((out, 1) if per_output else (1, inp), np.float16)
    save_file(tensors, str(path))


@pytest.mark.parametrize("algo", ["locon", "loha", "lokr"])
@pytest.mark.parametrize("wd_on_output", [True, False])
def test_network_weights_whose_dora_scale_has_the_other_axis_is_dbs402(tmp_path, algo, wd_on_output):
    """A `--network_weights` file whose dora_scale is shaped for the other wd_on_output than the network's:
    LoConModule / LohaModule / LokrModule (lycoris-lora 4.1.3) build dora_scale as (out, 1) with wd_on_out and
    (1, in) without, so LycorisNetworkKohya.load_weights' load_state_dict raises a size mismatch: DBS402
    naming the module and both shapes. The file of the network's own axis converts and plans."""
    extra = 'network_weights = "prev.safetensors"\n'
    args = f'"algo={algo}", "dora_wd=True", "wd_on_output={wd_on_output}"'
    _dora_file(tmp_path / "prev.safetensors", algo, per_output=not wd_on_output)
    outcome = _convert(tmp_path, args, extra=extra)
    assert outcome.exit_code != 0 and fate(outcome, "network_weights") == "invalid", errors(outcome)
    (hit,) = [d for d in outcome.diagnostics if d.code == "DBS402"]
    got, want = ("[3072, 1]", "[1, 768]") if not wd_on_output else ("[1, 768]", "[3072, 1]")
    assert f"`{FC1}.dora_scale` has shape {got}, not {want}" in hit.message, hit.message
    _dora_file(tmp_path / "prev.safetensors", algo, per_output=wd_on_output)
    outcome = _convert(tmp_path, args, extra=extra)
    assert outcome.exit_code == 0 and fate(outcome, "network_weights") == "mapped", errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_axis, a.init_layers) == (True, "output" if wd_on_output else "input", 1)


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
@pytest.mark.parametrize("axis", ["output", "input"])
def test_a_spec_starting_from_a_dora_scale_of_the_other_axis_is_dbs356_at_plan_time(tmp_path, kind, axis):
    """The compiler's init_weights check: a hand-written spec whose decomposed layers' dora_axis differs from
    the file's dora_scale shape is refused at plan time (DBS356, naming the tensor and both shapes), not when
    the run loads it; the file of the spec's axis plans."""
    from dbspec.frontend import plan_spec
    from tests.unit.convert_kit import GPU

    images(tmp_path / "img", 1, (512, 512))
    form = '\ndora_form = "lycoris"\ntext_encoder_targets = ["fc1"]' if kind == "lora" else ""
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'spec_version = 2\n[model]\nbase = "{SD15}"\n[adapter]\nkind = "{kind}"\nrank = 16\nalpha = 8.0\n'
        f'dora = true\ndora_axis = "{axis}"{form}\ninit_weights = "prev.safetensors"\ninit_partial = true\n'
        '[train]\ntext_encoder = true\n[optimizer]\nlr = 1e-4\n[[datasets]]\nname = "s"\npath = "img"\n'
        'prompt = "a photo of ohwx"\n[schedule]\nsteps = 10\n'
    )
    algo = {"lora": "locon"}.get(kind, kind)
    _dora_file(tmp_path / "prev.safetensors", algo, per_output=axis == "input")
    planned = plan_spec(spec, GPU, "spec.toml", [])
    assert planned.plan is None
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS356"]
    got, want = ("[3072, 1]", "[1, 768]") if axis == "input" else ("[1, 768]", "[3072, 1]")
    assert hit.path == "adapter.init_weights"
    assert f"`{FC1}.dora_scale` has shape {got}, not {want}" in hit.message, hit.message
    _dora_file(tmp_path / "prev.safetensors", algo, per_output=axis == "output")
    planned = plan_spec(spec, GPU, "spec.toml", [])
    assert planned.plan is not None, [f"{d.code}: {d.message}" for d in planned.diagnostics]
    assert planned.plan.adapter.dora_axis == axis


@pytest.mark.parametrize("kind", ["lora", "loha"])
def test_a_block_axis_of_its_own_is_checked_per_layer_at_plan_time(tmp_path, kind):
    """A block with a dora_axis of its own (a preset entry's wd_on_out) over CLIP's fc1: the file's
    dora_scale is checked against that layer's axis at plan time (DBS356 naming the layer and its axis), the
    layer found in the base model's diffusers folder; the file of the block's axis plans, and a model whose
    files do not list the layer leaves the check to the run's load."""
    import numpy as np
    from safetensors.numpy import save_file

    from dbspec.frontend import plan_spec
    from tests.unit.convert_kit import GPU
    from test_compile import diffusers_folder

    model = tmp_path / "sd15"
    diffusers_folder(model)
    images(tmp_path / "img", 1, (512, 512))
    form = '\ndora_form = "lycoris"' if kind == "lora" else ""
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'spec_version = 2\n[model]\nbase = "sd15"\n[adapter]\nkind = "{kind}"\nrank = 16\nalpha = 8.0\n'
        f'dora = true\ndora_axis = "output"{form}\ntext_encoder_targets = ["fc1"]\n'
        'init_weights = "prev.safetensors"\ninit_partial = true\n'
        '[[adapter.text_encoder_blocks]]\npattern = "mlp\\\\.fc1$"\nrank = 16\nalpha = 8.0\n'
        'dora_axis = "input"\n'
        '[train]\ntext_encoder = true\n[optimizer]\nlr = 1e-4\n[[datasets]]\nname = "s"\npath = "img"\n'
        'prompt = "a photo of ohwx"\n[schedule]\nsteps = 10\n'
    )

    def planned(per_output: bool, listed: bool):
        _dora_file(tmp_path / "prev.safetensors", {"lora": "locon"}.get(kind, kind), per_output=per_output)
        fc1 = {"text_model.encoder.layers.0.mlp.fc1.weight": np.zeros((3072, 768), np.float32)}
        norm = {"text_model.final_layer_norm.weight": np.zeros(768, np.float32)}
        save_file({**norm, **(fc1 if listed else {})}, str(model / "text_encoder" / "model.safetensors"))
        return plan_spec(spec, GPU, "spec.toml", [])

    wrong = planned(per_output=True, listed=True)  # the adapter's axis, not the block's
    assert wrong.plan is None
    (hit,) = [d for d in wrong.diagnostics if d.code == "DBS356"]
    assert hit.path == "adapter.init_weights"
    assert f"`{FC1}.dora_scale` has shape [3072, 1], not [1, 768]" in hit.message, hit.message
    assert "text_model.encoder.layers.0.mlp.fc1: dora_axis input" in hit.message, hit.message
    right = planned(per_output=False, listed=True)
    assert right.plan is not None, [f"{d.code}: {d.message}" for d in right.diagnostics]
    assert [b.dora_axis for b in right.plan.adapter.text_encoder_blocks] == ["input"]
    unlisted = planned(per_output=True, listed=False)  # left to the run's load
    assert "DBS356" not in {d.code for d in unlisted.diagnostics}
