"""kohya configs training LyCORIS's T-LoRA (`network_module = "lycoris.kohya"`, `algo=tlora`): once refused
(DBS403), now [adapter] kind "tlora". The expectation is lycoris-lora 4.1.3 as kohya runs it: create_network
hands TLoraModule network_dim / network_alpha (never sig_type, use_data_init or mask_group_id: the principal
SVD start), kohya's train_network.py never sets a timestep mask, and TLoraModule cannot run a k x k
convolution (its 1x1 factors' output has another size: kohya stops at the first forward), which conv_dim,
defaulting to network_dim (0 too), reaches through every preset that scans the ResNets."""

from __future__ import annotations

import attrs
import pytest

from convert_kit import (
    SD15,
    SDXL,
    codes,
    errors,
    expressible,
    fate,
    images,
    kohya,
    messages,
    out_path,
    plan_of,
    write,
)

CONFIG = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
network_module = "lycoris.kohya"
network_dim = 8
network_alpha = 4
network_args = [{args}]
learning_rate = 1e-4
optimizer_type = "AdamW"
max_train_steps = 800
mixed_precision = "fp16"
save_precision = "fp16"
"""


def _lycoris(tmp_path, args: str, model: str = SD15):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(tmp_path / "cfg.toml", CONFIG.format(model=model, args=args))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")


def test_tlora_attn_mlp_takes_rank_alpha_and_the_preset_targets(tmp_path):
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=attn-mlp"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank) == ("tlora", 8, 4.0, 0)
    assert "proj_in" in a.denoiser_targets and "ff.net.2" in a.denoiser_targets
    assert "conv1" not in a.denoiser_targets and "fc1" in a.text_encoder_targets
    from dbspec.plan.summary import adapter_rows

    assert "no timestep rank mask" in dict(adapter_rows(a))["  T-LoRA"]
    assert fate(outcome, "network_args") == "mapped"


def test_tlora_with_a_preset_reaching_kxk_convolutions_stops_kohya(tmp_path):
    """LyCORIS's default preset (full) scans the ResNets, Downsample2D and Upsample2D: their 3x3
    convolutions get TLoraModules at conv_dim (network_dim by default, `conv_dim=0` too), whose forward
    fails (tests/runtime/test_lycoris_tlora.py checks TLoraModule does)."""
    for args in ('"algo=tlora"', '"algo=tlora", "conv_dim=0"', '"algo=tlora", "preset=unet-convblock-only"'):
        folder = tmp_path / str(len(args))
        outcome = _lycoris(folder, args)
        assert outcome.exit_code != 0 and "DBS402" in codes(outcome), args
        assert "k x k convolutions" in messages(outcome, "DBS402")


def test_tlora_full_preset_converts_when_apply_to_drops_the_unet(tmp_path):
    """network_train_text_encoder_only: apply_to keeps only the text encoder's (Linear) modules."""
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(
        tmp_path / "cfg.toml",
        CONFIG.format(model=SD15, args='"algo=tlora"') + "network_train_text_encoder_only = true\n",
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.kind == "tlora" and plan.adapter.text_encoder_targets


def test_tlora_arguments_it_never_reads_are_ignored(tmp_path):
    args = (
        '"algo=tlora", "preset=attn-only", "rank_dropout=0.3", "use_scalar=True", "dora_wd=True", '
        '"rs_lora=True", "use_tucker=True", "dropout=0.1", "loraplus_lr_ratio=4"'
    )
    outcome = _lycoris(tmp_path, args)
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.alpha / a.rank, a.dora, a.scalar, a.rank_dropout) == ("tlora", 0.5, False, False, 0.0)
    for key in (
        "rank_dropout",
        "use_scalar",
        "dora_wd",
        "rs_lora",
        "use_tucker",
        "dropout",
        "loraplus_lr_ratio",
    ):
        assert fate(outcome, f"network_args {key}") == "inert", key
    assert "bypass_mode" in outcome.conversion.reports["network_args dropout"].note


def test_tlora_alpha_zero_is_the_rank(tmp_path):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    config = CONFIG.format(model=SD15, args='"algo=tlora", "preset=attn-mlp"')
    write(tmp_path / "cfg.toml", config.replace("network_alpha = 4", "network_alpha = 0"))
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha) == (8, 8.0)


def test_tlora_module_dropout_is_the_adapter_s(tmp_path):
    """TLoraModule.forward: one torch.rand(1) per layer and training forward, first, the base output alone
    below the rate (runtime/mixed_kinds.py add_own_module_dropout; tests/runtime/test_lycoris_tlora.py)."""
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=attn-mlp", "module_dropout=0.25"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, a.rank_dropout) == ("tlora", 0.25, 0.0)
    assert fate(outcome, "network_args") == "mapped"
    from dbspec.plan.summary import adapter_rows

    assert "module 0.25 (while training)" in dict(adapter_rows(a))["  dropout"]


def test_tlora_bypass_mode_and_its_dropout(tmp_path):
    """bypass_mode (LyCORIS's str_bool) -> `bypass`: TLoraModule.bypass_forward, the update on activations;
    only there its `dropout` (network_args', else kohya's --network_dropout) acts -> `dropout`
    (tests/runtime/test_lycoris_tlora.py); a rate torch's Dropout refuses stops kohya (DBS402)."""
    from dbspec.plan.summary import adapter_rows

    outcome = _lycoris(tmp_path / "a", '"algo=tlora", "preset=attn-mlp", "bypass_mode=True", "dropout=0.2"')
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path / "a")
    a = plan.adapter
    assert (a.kind, a.bypass, a.bypass_dropout) == ("tlora", True, 0.2)
    from dbspec.plan.validate import plan_problems

    assert not list(plan_problems(plan))
    assert list(plan_problems(attrs.evolve(plan, adapter=attrs.evolve(a, bypass=False))))
    assert "dropout 0.2 on its output" in dict(adapter_rows(a))["  bypass"]
    folder = tmp_path / "b"
    images(folder / "img" / "10_ohwx cat", 2, (512, 512))
    config = CONFIG.format(model=SD15, args='"algo=tlora", "preset=attn-mlp", "bypass_mode=1"')
    write(folder / "cfg.toml", config + "network_dropout = 0.1\n")
    outcome = kohya(folder, config_file=folder / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, folder).adapter
    assert (a.bypass, a.bypass_dropout) == (True, 0.1)
    assert fate(outcome, "network_dropout") == "mapped"
    outcome = _lycoris(tmp_path / "c", '"algo=tlora", "preset=attn-mlp", "bypass_mode=True", "dropout=1.5"')
    assert "DBS402" in codes(outcome)


_FILE = 'unet_target_module = ["Transformer2DModel"]\nunet_target_name = []\n'


@pytest.mark.parametrize(
    ("name", "text", "code", "words"),
    [
        ("targets", _FILE, "", ""),
        (
            "same dims",
            _FILE + '[module_algo_map.Transformer2DModel]\nalgo = "tlora"\ndim = 8\nalpha = 4\n',
            "",
            "",
        ),
        ("default names", 'unet_target_module = ["Transformer2DModel"]\n', "DBS402", "conv_in, conv_out"),
        ("resnets", _FILE.replace('"]', '", "ResnetBlock2D"]', 1), "DBS402", "conv1, conv2"),
        ("negative alpha", _FILE + "[module_algo_map.Transformer2DModel]\ndim = 16\nalpha = -2\n", "", ""),
        ("other algo", _FILE + '[module_algo_map.Transformer2DModel]\nalgo = "lokr"\n', "", ""),
        ("diag-oft entry", _FILE + '[module_algo_map.FeedForward]\nalgo = "diag-oft"\n', "", ""),
        # an entry's own option that changes nothing there (no rank dropout to rescale): DBS405, was DBS403
        (
            "entry option",
            _FILE + '[module_algo_map.FeedForward]\nalgo = "lokr"\nrank_dropout_scale = true\n',
            "",
            "",
        ),
        # entries of other algorithms on the ResNets' k x k convolutions: the adapter's conv_targets, their
        # blocks' conv_rank (was DBS403; tests/runtime/test_lycoris_tlora_conv_entries.py); a T-LoRA entry
        # there stops kohya (DBS402)
        (
            "entry convolution",
            _FILE.replace('"]', '", "ResnetBlock2D"]', 1)
            + '[module_algo_map.ResnetBlock2D]\nalgo = "locon"\n',
            "",
            "",
        ),
        (
            "own convolution beside entries",
            _FILE.replace('"]', '", "ResnetBlock2D", "Downsample2D"]', 1)
            + '[module_algo_map.ResnetBlock2D]\nalgo = "locon"\n',
            "DBS402",
            "k x k convolutions (conv) a T-LoRA module",
        ),
        ("sig_type", _FILE + '[module_algo_map.Transformer2DModel]\nsig_type = "last"\n', "", ""),
        (
            "unknown sig_type",
            _FILE + '[module_algo_map.Transformer2DModel]\nsig_type = "first"\n',
            "DBS402",
            "unknown sig_type",
        ),
        ("own bypass_mode", _FILE + "[module_algo_map.FeedForward]\nbypass_mode = true\n", "", ""),
        ("random start", _FILE + "[module_algo_map.Transformer2DModel]\nuse_data_init = false\n", "", ""),
    ],
)
def test_tlora_preset_files(tmp_path, name, text, code, words):
    """A preset file on an algo=tlora network: its targets (LyCORIS's default names, conv_in / conv_out, and
    classes reaching k x k convolutions stop kohya: DBS402); map entries at the network's dims and algo
    change nothing; another algorithm converts (a block's kind: lora, loha, lokr, full, ia3, glora on Linear
    and 1x1 layers, without options of their own), an entry's own sig_type to its block's (one TLoraModule
    does not know stops kohya, DBS402), use_data_init = false to its block's data_init (a random start,
    tests/unit/test_convert_kohya_tlora_random.py); a negative alpha (its update's sign flipped, as
    TLoraModule keeps it; was DBS403) to its block's (tests/runtime/test_lycoris_entry_signs.py)
    (tests/runtime/test_lycoris_tlora.py builds lycoris-lora's network from such a file)."""
    write(tmp_path / "p.toml", text)
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=p.toml"')
    if not code:
        assert outcome.exit_code == 0, errors(outcome)
        a = plan_of(outcome, tmp_path).adapter
        assert a.kind == "tlora" and a.rank == 8 and "proj_in" in a.denoiser_targets, name
        return
    assert code in codes(outcome), (name, errors(outcome))
    assert words in messages(outcome, code), name


def test_tlora_network_resnet_entries_are_conv_blocks(tmp_path):
    """LoCon entries on the ResNets of an algo=tlora network (was DBS403): the adapter's conv_targets (the
    k x k convolutions they reach), their block's conv_rank at conv_dim (network_dim by default: LyCORIS's),
    the T-LoRA layers on none (tests/runtime/test_lycoris_tlora_conv_entries.py against lycoris-lora)."""
    text = _FILE.replace('"]', '", "ResnetBlock2D"]', 1) + '[module_algo_map.ResnetBlock2D]\nalgo = "locon"\n'
    write(tmp_path / "p.toml", text)
    a = plan_of(
        expressible(_lycoris(tmp_path, '"algo=tlora", "preset=p.toml", "conv_dim=6"')), tmp_path
    ).adapter
    assert (a.kind, a.conv_rank, a.conv_targets) == ("tlora", 0, ("conv1", "conv2"))
    assert [(b.kind, b.rank, b.conv_rank) for b in a.blocks] == [("lora", 8, 6)]


def test_tlora_entries_own_dims_are_blocks(tmp_path):
    """Entries with algo tlora and their own dim / alpha (create_single_module: `dim or lora_dim`, `alpha or
    self.alpha`; TLoraModule starts each layer from its SVD at that dim, scale alpha / dim, rs_lora never
    read) become T-LoRA blocks: the U-Net's [[adapter.blocks]], CLIP's [[adapter.text_encoder_blocks]], an
    entry alpha of 0 the network's (tests/runtime/test_lycoris_tlora.py checks them against lycoris-lora)."""
    text = _FILE.replace('"]\n', '"]\ntext_encoder_target_module = ["CLIPAttention"]\n', 1)
    text += '[module_algo_map.Transformer2DModel]\nalgo = "tlora"\ndim = 16\nalpha = 2\n'
    text += "[module_algo_map.CLIPAttention]\ndim = 5\nalpha = 0\n"
    write(tmp_path / "p.toml", text)
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=p.toml", "rs_lora=True"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("tlora", 8, 4.0)
    ((unet,), (clip,)) = a.blocks, a.text_encoder_blocks
    assert (unet.kind, unet.rank, unet.alpha, clip.rank, clip.alpha) == ("adapter", 16, 2.0, 5, 4.0)
    assert "proj_in" in unet.pattern and "q_proj" in clip.pattern
    assert a.params["unet"] > 0


@pytest.mark.parametrize("algo", ["locon", "loha", "lokr"])
def test_tlora_entries_on_another_algo_s_network_are_tlora_blocks(tmp_path, algo):
    """`algo = "tlora"` entries on a LoCon / LoHa / LoKr network (was DBS403): blocks of kind tlora at the
    entry's dim and alpha, the network's other layers its own kind (tests/runtime/test_lycoris_tlora.py
    trains such a LoCon network against lycoris-lora 4.1.3's)."""
    text = _FILE.replace('"]\n', '", "ResnetBlock2D"]\n', 1)
    write(tmp_path / "p.toml", text + '[module_algo_map.Transformer2DModel]\nalgo = "tlora"\ndim = 6\n')
    outcome = _lycoris(tmp_path, f'"algo={algo}", "conv_dim=4", "preset=p.toml"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == {"locon": "lora"}.get(algo, algo) and a.conv_rank == 4
    ((block,),) = (a.blocks,)
    assert (block.kind, block.rank, block.alpha) == ("tlora", 6, 4.0) and "proj_in" in block.pattern


def test_a_tlora_entry_s_own_bypass_mode_is_its_block_s(tmp_path):
    """An entry's own bypass_mode on a tlora network: its block's `bypass` (TLoraModule's bypass forward on
    those layers alone); beside the network's dropout (was DBS403, a spec's DBS605), which TLoraModule applies
    in bypass_mode only, the adapter's bypass dropout, which each layer applies in its own bypass forward
    alone (tests/runtime/test_lycoris_tlora_mixed_opts.py)."""
    write(tmp_path / "p.toml", _FILE + "[module_algo_map.FeedForward]\nbypass_mode = true\n")
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=p.toml"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.bypass is False and [b.bypass for b in a.blocks] == [True]
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "p.toml", _FILE + "[module_algo_map.FeedForward]\nbypass_mode = true\n")
    outcome = _lycoris(tmp_path / "d", '"algo=tlora", "preset=p.toml", "dropout=0.1"')
    assert outcome.exit_code == 0 and not {"DBS403", "DBS603"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "d").adapter
    assert (a.bypass, a.bypass_dropout, [b.bypass for b in a.blocks]) == (False, 0.1, [True])


def test_network_options_beside_a_tlora_network_s_other_kinds(tmp_path):
    """The network's rs_lora, which LokrModule reads and TLoraModule does not, beside a tlora network's LoKr
    entries: their blocks' alpha x sqrt(dim) and `rank_stabilized` (was DBS403;
    test_convert_kohya_rs_lora_entries.py); rank_dropout beside LoKr entries stops kohya (DBS402: their
    LokrModules' CPU mask; test_convert_kohya_refusals_audit.py)."""
    write(tmp_path / "p.toml", _FILE + '[module_algo_map.FeedForward]\nalgo = "lokr"\n')
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=p.toml", "rs_lora=True"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert [b.rank_stabilized for b in plan_of(outcome, tmp_path).adapter.blocks] == ["on"]
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=p.toml", "rank_dropout=0.1"')
    assert "DBS402" in codes(outcome) and "CPU" in messages(outcome, "DBS402")


def test_a_tlora_entry_on_a_kxk_convolution_stops_kohya(tmp_path):
    """TLoraModule on a k x k convolution adds an output of another size: kohya stops (DBS402)."""
    text = 'unet_target_module = ["ResnetBlock2D"]\nunet_target_name = []\n'
    write(tmp_path / "p.toml", text + '[module_algo_map.ResnetBlock2D]\nalgo = "tlora"\n')
    outcome = _lycoris(tmp_path, '"algo=locon", "conv_dim=4", "preset=p.toml"')
    assert "DBS402" in codes(outcome) and "k x k convolution" in messages(outcome, "DBS402")
    assert "output of another size" in messages(outcome, "DBS402")  # its padding: SD3's patch converts


def test_tlora_max_norm_is_lycoris_s_and_a_start_file_loads(tmp_path):
    """--scale_weight_norms: TLoraModule.apply_max_norm (LyCORIS's form: its singular values times the
    ratio); --network_weights: load_weights' load_state_dict(strict=False) of q / p / lambda (the frozen start
    stays the base model's SVD; tests/runtime/test_lycoris_sd_tlora_file.py)."""
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    base = CONFIG.format(model=SD15, args='"algo=tlora", "preset=attn-mlp"')
    write(tmp_path / "cfg.toml", base + "scale_weight_norms = 1.5\n")
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form) == ("tlora", 1.5, "lycoris")
    assert fate(outcome, "scale_weight_norms") == "mapped"
    from dbspec.plan.summary import adapter_rows

    assert "singular values" in dict(adapter_rows(a))["  max norm"]
    write(tmp_path / "cfg.toml", base + 'network_weights = "w.safetensors"\n')
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_weights") == "mapped"
    text = out_path(tmp_path).read_text()
    assert 'init_weights = "../w.safetensors"' in text and "init_partial = true" in text, text


def test_tlora_on_sdxl(tmp_path):
    images(tmp_path / "img" / "10_ohwx cat", 2, (512, 512))
    write(tmp_path / "cfg.toml", CONFIG.format(model=SDXL, args='"algo=tlora", "preset=attn-mlp"'))
    outcome = kohya(
        tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch sdxl_train_network.py"
    )
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert (plan.adapter.kind, plan.model.family) == ("tlora", "sdxl")


def test_tlora_on_flux_is_one_module_per_fused_layer(tmp_path):
    """Was DBS403: one TLoraModule per fused Linear, one SVD of its stacked weight (fused_projections;
    tests/unit/test_convert_lycoris_flow_tlora.py has the rest)."""
    from convert_kit import FLUX_LYCORIS, component_file

    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(tmp_path, command=f'{FLUX_LYCORIS}--network_args "algo=tlora"')
    assert "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "tlora" and [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]


def test_tlora_start_file_is_checked_at_plan_time(tmp_path):
    """A T-LoRA spec's init_weights: LyCORIS's q_layer.weight / p_layer.weight / lambda_layer / alpha per
    module (a LoRA's lora_down is not T-LoRA's: DBS356); on Flux kohya's TLoraModule spans a fused Linear
    (one SVD of the stacked weight): DBS356 without fused_projections."""
    from safetensors.torch import save_file
    from test_init_weights import _plan

    import torch

    name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    state = {
        f"{name}.q_layer.weight": torch.zeros(4, 768),
        f"{name}.p_layer.weight": torch.zeros(768, 4),
        f"{name}.lambda_layer": torch.ones(1, 4),
        f"{name}.alpha": torch.tensor(4.0),
    }
    save_file(state, str(tmp_path / "t.safetensors"))
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 768)}, str(tmp_path / "l.safetensors"))
    adapter = 'rank = 4\ntext_encoder_targets = ["q_proj"]\ninit_partial = true\ninit_weights = '
    train = "[train]\ntext_encoder = true"
    planned = _plan(tmp_path, adapter + '"t.safetensors"', train, kind="tlora")
    assert planned.plan is not None, planned.diagnostics
    assert planned.plan.adapter.init_layers == 1
    planned = _plan(tmp_path, adapter + '"l.safetensors"', train, kind="tlora")
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS356"]
    assert "is not LyCORIS tlora's" in hit.message
    planned = _plan(tmp_path, adapter + '"t.safetensors"', train, base="builtin:tiny-flux", kind="tlora")
    (hit,) = [d for d in planned.diagnostics if d.code == "DBS356"]
    assert "on Flux with adapter.fused_projections" in hit.message  # each part its own SVD: no kohya file


def test_tlora_network_s_oft_and_dylora_entries_are_blocks(tmp_path):
    """Diag-OFT, BOFT and DyLoRA entries on an algo=tlora network (was DBS403): blocks of that kind as
    create_single_module builds them, the entry's dim (else the network's) their block-size hint / rank,
    the network's constraint 0 (the OFT blocks' alpha) unrescaled, DyLoRA in blocks of the network's
    block_size 4 (the block's unit); a DyLoRA dim that is not a multiple stops kohya (DyLoraModule asserts,
    DBS402), the network's block_size is their blocks' `unit` (was DBS403), its constraint / rescaled and the
    entries' own constraint / rescaled (Diag-OFT, BOFT) and block_size (DyLoRA) are their blocks'
    (tests/runtime/test_lycoris_tlora_oft_dylora.py and test_lycoris_oft_network_tlora_entries.py check them
    against lycoris-lora 4.1.3)."""
    text = _FILE.replace('"]\n', '"]\ntext_encoder_target_module = ["CLIPAttention", "CLIPMLP"]\n', 1)
    text += '[module_algo_map.FeedForward]\nalgo = "diag-oft"\n'
    text += '[module_algo_map.BasicTransformerBlock]\nalgo = "dylora"\n'
    text += '[module_algo_map.CLIPMLP]\nalgo = "boft"\ndim = 4\n'
    write(tmp_path / "p.toml", text)
    outcome = _lycoris(tmp_path, '"algo=tlora", "preset=p.toml", "module_dropout=0.1"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.module_dropout) == ("tlora", 8, 4.0, 0.1)
    blocks = {b.kind: b for b in a.blocks}
    assert set(blocks) == {"diag-oft", "dylora"}
    oft, dylora = blocks["diag-oft"], blocks["dylora"]
    assert (oft.rank, oft.alpha, oft.rescaled) == (8, 0.0, "adapter") and "ff" in oft.pattern
    assert (dylora.rank, dylora.alpha, dylora.unit) == (8, 4.0, 4) and "to_q" in dylora.pattern
    ((boft,),) = (a.text_encoder_blocks,)
    assert (boft.kind, boft.rank, boft.alpha) == ("boft", 4, 0.0) and "fc1" in boft.pattern
    assert not a.oft_rescaled and a.oft_constraint == 0.0
    write(tmp_path / "block_size" / "p.toml", text)
    outcome = _lycoris(tmp_path / "block_size", '"algo=tlora", "preset=p.toml", "block_size=8"')
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    planned = plan_of(outcome, tmp_path / "block_size").adapter
    assert [(b.kind, b.unit) for b in planned.blocks if b.kind == "dylora"] == [("dylora", 8)]
    # the network's constraint and rescaled: the Diag-OFT / BOFT blocks' alpha and rescaled (was DBS403)
    write(tmp_path / "oft" / "p.toml", text)
    outcome = _lycoris(tmp_path / "oft", '"algo=tlora", "preset=p.toml", "constraint=0.1", "rescaled=True"')
    assert outcome.exit_code == 0, errors(outcome)
    a = plan_of(outcome, tmp_path / "oft").adapter
    oft = [b for b in [*a.blocks, *a.text_encoder_blocks] if b.kind in ("diag-oft", "boft")]
    assert {(b.kind, b.alpha, b.rescaled) for b in oft} == {("diag-oft", 0.1, "on"), ("boft", 0.1, "on")}
    write(tmp_path / "odd" / "p.toml", text.replace('algo = "dylora"\n', 'algo = "dylora"\ndim = 6\n'))
    outcome = _lycoris(tmp_path / "odd", '"algo=tlora", "preset=p.toml"')
    assert "DBS402" in codes(outcome) and "lora_dim % block_size" in messages(outcome, "DBS402")
    # the entries' own constraint, rescaled and block_size: their blocks' alpha, rescaled and unit; an option
    # their class never reads (DyLoRA's rescaled) changes nothing (DBS405; was DBS403)
    own = text.replace('algo = "diag-oft"\n', 'algo = "diag-oft"\nconstraint = 0.001\nrescaled = true\n')
    own = own.replace('algo = "dylora"\n', 'algo = "dylora"\nblock_size = 2\n')
    write(tmp_path / "own" / "p.toml", own)
    outcome = _lycoris(tmp_path / "own", '"algo=tlora", "preset=p.toml"')
    assert outcome.exit_code == 0, errors(outcome)
    blocks = {b.kind: b for b in plan_of(outcome, tmp_path / "own").adapter.blocks}
    assert (blocks["diag-oft"].alpha, blocks["diag-oft"].rescaled, blocks["dylora"].unit) == (0.001, "on", 2)
    other = own.replace("block_size = 2\n", "block_size = 2\nrescaled = true\n")
    write(tmp_path / "other" / "p.toml", other)
    outcome = _lycoris(tmp_path / "other", '"algo=tlora", "preset=p.toml"')
    assert "DBS403" not in codes(outcome) and "rescaled" in messages(outcome, "DBS405")


def test_tlora_entries_beside_a_networks_rank_dropout(tmp_path):
    """A LoCon / LoHa network's rank_dropout beside its preset file's tlora entries (was DBS403, a spec's
    DBS578): the LoCon / LoHa layers draw their row masks, TLoraModule never reads it
    (tests/runtime/test_lycoris_tlora_rank_dropout.py)."""
    write(tmp_path / "p.toml", _FILE + '[module_algo_map.FeedForward]\nalgo = "tlora"\n')
    for algo, form in (("locon", "lycoris"), ("loha", "kohya")):
        outcome = _lycoris(tmp_path, f'"algo={algo}", "preset=p.toml", "rank_dropout=0.1"')
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path).adapter
        assert (a.rank_dropout, a.rank_dropout_form) == (0.1, form)
        assert [b.kind for b in a.blocks] == ["tlora"]
