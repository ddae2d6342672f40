"""Realistic diffusers DreamBooth launch files (diffusers' READMEs, blog posts and issues: wrappers,
accelerate launch, torchrun, docker, srun) converted and planned; each plan is compared with what diffusers
58eb52c's scripts do. Expected LRs come from diffusers' own `get_scheduler`, as the scripts call it;
checkpoint and validation steps from the scripts' conditions (`global_step % n == 0`, `epoch % n == 0`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from convert_kit import (
    SD15,
    SD21,
    SDXL,
    codes,
    diffusers,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    fate,
    images,
    messages,
    plan_of,
    write,
)

README_DREAMBOOTH = """\
wget https://raw.githubusercontent.com/huggingface/diffusers/main/examples/dreambooth/train_dreambooth.py
pip install -r requirements.txt
export MODEL_NAME="{model}"
export INSTANCE_DIR="dog"
export CLASS_DIR="class"
export OUTPUT_DIR="path-to-save-model"

accelerate launch train_dreambooth.py \\
  --pretrained_model_name_or_path=$MODEL_NAME  \\
  --instance_data_dir=$INSTANCE_DIR \\
  --class_data_dir=$CLASS_DIR \\
  --output_dir=$OUTPUT_DIR \\
  --with_prior_preservation --prior_loss_weight=1.0 \\
  --instance_prompt="a photo of sks dog" \\
  --class_prompt="a photo of dog" \\
  --resolution=512 \\
  --train_batch_size=1 \\
  --gradient_accumulation_steps=1 \\
  --learning_rate=5e-6 \\
  --lr_scheduler="constant" \\
  --lr_warmup_steps=0 \\
  --num_class_images=200 \\
  --max_train_steps=800 \\
  --push_to_hub{extra}
"""


def diffusers_lrs(name: str, lr: float, warmup: int, total: int, cycles: int = 1, power: float = 1.0):
    """The LR of each optimizer step 0..total, from diffusers' get_scheduler as the scripts call it
    (one process: num_warmup_steps = lr_warmup_steps, num_training_steps = max_train_steps)."""
    torch = pytest.importorskip("torch")
    get_scheduler = pytest.importorskip("diffusers.optimization").get_scheduler
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=warmup, num_training_steps=total, num_cycles=cycles, power=power
    )
    out = []
    for _ in range(total + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def assert_lrs(plan, expected: list[float]) -> None:
    points = dict(plan.schedule.lr_points)
    assert len(points) >= 2
    for step, lr in points.items():
        assert math.isclose(lr, expected[step], rel_tol=1e-9, abs_tol=1e-15), (step, lr, expected[step])


def every_n(n: int, total: int) -> set[int]:
    """The steps diffusers checkpoints (and train_dreambooth.py validates) at: global_step % n == 0."""
    return {s for s in range(1, total + 1) if s % n == 0}


def epoch_validations(per_epoch: int, epochs: int, every: int, total: int) -> set[int]:
    """The LoRA scripts: after each epoch with `epoch % validation_epochs == 0` (0-based), and at the end."""
    return {min(per_epoch * (e + 1), total) for e in range(epochs) if e % every == 0} | {total}


def steps_of(step_range) -> set[int]:
    return set(tuple(step_range))


def pipeline_folder(root: Path, scheduler: str, prediction: str = "epsilon") -> Path:
    """A model folder with the two files the SDXL LoRA script reads before training (no weights)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLPipeline", "scheduler": ["diffusers", scheduler]})
    )
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": scheduler, "prediction_type": prediction})
    )
    return root


# --- 1. the README's train_dreambooth.py with prior preservation, after a wget of the script ---------------


def test_readme_prior_preservation_after_wget(tmp_path):
    images(tmp_path / "dog", 5, (512, 512))
    images(tmp_path / "class", 200, (64, 64), prefix="c")
    write(tmp_path / "train.sh", README_DREAMBOOTH.format(model="CompVis/stable-diffusion-v1-4", extra=""))
    outcome = diffusers(tmp_path, "train.sh")
    assert "DBS407" not in codes(outcome) or "launches" not in messages(outcome, "DBS407")
    plan = plan_of(outcome, tmp_path)
    assert plan.schedule.total_steps == 800 and plan.schedule.batch_size == 2  # 1 instance + 1 class
    assert plan.model.prediction == "epsilon" and plan.loss.noise_offset == 0 and plan.loss.min_snr_gamma == 0
    assert_lrs(plan, diffusers_lrs("constant", 5e-6, 0, 800))
    assert steps_of(plan.checkpoints.steps) - {800} == every_n(500, 800)  # dbspec also saves the end
    assert fate(outcome, "push_to_hub") == "inert"


# --- 2. docker + bash -c, SD 2.1 (v-prediction), Min-SNR, offset noise, polynomial --------------------------


def test_docker_bash_c_v_prediction_min_snr_offset_polynomial(tmp_path):
    images(tmp_path / "data" / "toy", 4, (768, 768))
    write(
        tmp_path / "run_docker.sh",
        f"""#!/usr/bin/env bash
set -euo pipefail
export MODEL_NAME={SD21}
docker run --gpus all --rm -v $(pwd)/data:/data -e MODEL_NAME=$MODEL_NAME \\
  huggingface/diffusers-pytorch-cuda:latest \\
  bash -c 'cd /workspace && accelerate launch --num_processes 1 train_dreambooth.py \\
    --pretrained_model_name_or_path=$MODEL_NAME --instance_data_dir=data/toy \\
    --instance_prompt="a photo of sks toy" --resolution=768 --train_batch_size=2 \\
    --learning_rate=2e-6 --lr_scheduler=polynomial --lr_power=2 --lr_warmup_steps=50 \\
    --max_train_steps=300 --snr_gamma=5.0 --offset_noise --mixed_precision=bf16 \\
    --checkpointing_steps=100 --validation_prompt="a sks toy on a beach" --validation_steps=150 \\
    --output_dir=/data/out'
""",
    )
    outcome = diffusers(tmp_path, "run_docker.sh")
    assert "DBS404" not in codes(outcome) or "snr" not in messages(outcome, "DBS404")  # same form as dbspec
    plan = plan_of(outcome, tmp_path)
    assert plan.model.prediction == "v_prediction" and plan.loss.min_snr_gamma == 5.0
    assert plan.loss.noise_offset == pytest.approx(0.1)  # noise + 0.1 * randn(b, c, 1, 1)
    assert plan.schedule.total_steps == 300 and plan.schedule.batch_size == 2
    assert_lrs(plan, diffusers_lrs("polynomial", 2e-6, 50, 300, power=2.0))
    assert steps_of(plan.checkpoints.steps) == every_n(100, 300)
    assert steps_of(plan.validation.steps) == every_n(150, 300)


# --- 3. srun + torchrun, LoRA with cosine restarts, validation every epoch ----------------------------------


def test_srun_torchrun_lora_cosine_restarts(tmp_path):
    images(tmp_path / "cat", 6, (512, 512))
    write(
        tmp_path / "job.sbatch",
        f"""#!/bin/bash
#SBATCH --gres=gpu:1 --time=02:00:00
module load cuda/12.1
source ~/venv/bin/activate
srun --ntasks=1 torchrun --standalone --nproc_per_node=1 train_dreambooth_lora.py \\
  --pretrained_model_name_or_path="{SD15}" --instance_data_dir=cat \\
  --instance_prompt="a photo of sks cat" --output_dir=cat-lora --train_batch_size=2 \\
  --lr_scheduler=cosine_with_restarts --lr_num_cycles=3 --lr_warmup_steps=20 --learning_rate=1e-4 \\
  --max_train_steps=240 --checkpointing_steps=100 --validation_prompt="sks cat" --validation_epochs=1 \\
  --seed=42 --mixed_precision=fp16 --rank=16
""",
    )
    outcome = diffusers(tmp_path, "job.sbatch")
    plan = plan_of(outcome, tmp_path)
    assert plan.schedule.total_steps == 240 and plan.schedule.batch_size == 2 and plan.adapter.rank == 16
    assert_lrs(plan, diffusers_lrs("cosine_with_restarts", 1e-4, 20, 240, cycles=3))
    assert steps_of(plan.checkpoints.steps) == every_n(100, 240) | {240}
    # 6 images / batch 2 = 3 steps per epoch; 80 epochs, validated after each, and once more at the end
    assert steps_of(plan.validation.steps) == epoch_validations(3, 80, 1, 240)
    assert fate(outcome, "torchrun --nproc_per_node") == "inert" and plan.schedule.seed == 42


# --- 4. the SDXL README (nohup, CUDA_VISIBLE_DEVICES, redirections), caption_column without a dataset -------


def test_sdxl_readme_nohup_and_inert_caption_column(tmp_path):
    images(tmp_path / "dog", 5, (1024, 1024))
    write(
        tmp_path / "train_sdxl.sh",
        f"""export MODEL_NAME="{SDXL}"
export VAE_PATH="madebyollin/sdxl-vae-fp16-fix"
CUDA_VISIBLE_DEVICES=0 nohup python3 -u train_dreambooth_lora_sdxl.py \\
  --pretrained_model_name_or_path=$MODEL_NAME --pretrained_vae_model_name_or_path=$VAE_PATH \\
  --instance_data_dir="dog" --caption_column="prompt" --output_dir="lora-trained-xl" \\
  --mixed_precision="fp16" --instance_prompt="a photo of sks dog" --resolution=1024 \\
  --train_batch_size=1 --gradient_accumulation_steps=4 --learning_rate=1e-4 --report_to="wandb" \\
  --lr_scheduler="constant" --lr_warmup_steps=0 --max_train_steps=500 \\
  --validation_prompt="A photo of sks dog in a bucket" --validation_epochs=25 --seed="0" \\
  > train.log 2>&1 &
""",
    )
    outcome = diffusers(tmp_path, "train_sdxl.sh")
    assert fate(outcome, "caption_column") == "inert"  # read only with --dataset_name
    assert "validates at the end of every epoch" in messages(outcome, "DBS404")  # epochs 1, 26, 51, ...
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "sdxl" and plan.model.prediction == "epsilon"
    assert (plan.schedule.total_steps, plan.schedule.batch_size, plan.schedule.accumulation) == (500, 1, 4)
    assert_lrs(plan, diffusers_lrs("constant", 1e-4, 0, 500))
    assert steps_of(plan.checkpoints.steps) - {500} == every_n(500, 500) - {500}
    # 5 batches / 4 accumulated = 2 steps per epoch: every 25 epochs = 50 steps (diffusers: 2, 52, 102, ...)
    assert plan.validation.steps.every == 50 and plan.validation.guidance == 5.0
    assert not plan.datasets[0].flip


# --- 5. EDM models: Playground v2.5 (README), a local folder, a cached snapshot; unreadable models ----------


def test_playground_readme_is_refused_as_edm(tmp_path):
    images(tmp_path / "dog", 3, (1024, 1024))
    command = """accelerate launch train_dreambooth_lora_sdxl.py \\
  --pretrained_model_name_or_path="playgroundai/playground-v2.5-1024px-aesthetic"  \\
  --instance_data_dir="dog" --output_dir="dog-playground-lora" --mixed_precision="fp16" \\
  --instance_prompt="a photo of sks dog" --resolution=1024 --train_batch_size=1 \\
  --gradient_accumulation_steps=4 --learning_rate=1e-4 --use_8bit_adam --report_to="wandb" \\
  --lr_scheduler="constant" --lr_warmup_steps=0 --max_train_steps=500 \\
  --validation_prompt="A photo of sks dog in a bucket" --validation_epochs=25 --seed="0" --push_to_hub"""
    outcome = diffusers(tmp_path, command)
    assert outcome.exit_code == 1 and "EDM-style" in messages(outcome, "DBS403")
    assert fate(outcome, "do_edm_style_training") == "unsupported"
    with_snr = diffusers(tmp_path, command + " --snr_gamma 5")
    assert "Min-SNR formulation is not supported" in messages(with_snr, "DBS402")


def test_edm_scheduler_in_a_local_folder_or_the_hub_cache(tmp_path):
    images(tmp_path / "dog", 2, (1024, 1024))
    pipeline_folder(tmp_path / "models" / "edm-xl", "EDMDPMSolverMultistepScheduler")
    line = (
        "accelerate launch train_dreambooth_lora_sdxl.py --pretrained_model_name_or_path={} "
        "--instance_data_dir dog --instance_prompt 'a sks dog' --max_train_steps 10"
    )
    local = diffusers(tmp_path, line.format("models/edm-xl"))
    assert "EDMDPMSolverMultistepScheduler" in messages(local, "DBS403")
    snapshot = tmp_path / "hf-hub" / "models--someone--edm-xl" / "snapshots" / ("a" * 40)
    pipeline_folder(snapshot, "EDMEulerScheduler")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    cached = diffusers(tmp_path, line.format("someone/edm-xl"))
    assert "EDMEulerScheduler" in messages(cached, "DBS403") and "Hugging Face cache" in messages(
        cached, "DBS403"
    )
    unread = diffusers(tmp_path, line.format("someone/not-downloaded"))
    assert "DBS403" not in codes(unread) and "could not be read" in messages(unread, "DBS412")
    plain = pipeline_folder(tmp_path / "models" / "ddpm-xl", "EulerDiscreteScheduler")
    assert not {"DBS403", "DBS412"} & codes(diffusers(tmp_path, line.format(plain)))


# --- 6. an unquoted multi-word variable ---------------------------------------------------------------------


def test_unquoted_prompt_variable_is_what_argparse_rejects(tmp_path):
    images(tmp_path / "dog", 2, (512, 512))
    text = f"""PROMPT="a photo of sks dog"
accelerate launch train_dreambooth.py --pretrained_model_name_or_path={SD15} \\
  --instance_data_dir=dog --instance_prompt=$PROMPT --max_train_steps=100
"""
    write(tmp_path / "bad.sh", text)
    outcome = diffusers(tmp_path, "bad.sh")
    said = messages(outcome, "DBS402")
    assert outcome.exit_code == 1 and "unrecognized arguments: photo of sks dog" in said
    assert "$PROMPT" in said and "unquoted" in said
    write(tmp_path / "good.sh", text.replace("=$PROMPT", '="$PROMPT"'))
    good = diffusers(tmp_path, "good.sh")
    assert plan_of(good, tmp_path).datasets[0].images[0].caption == "a photo of sks dog"


# --- 7. an option a fork added ----------------------------------------------------------------------------


def test_fork_option_is_invalid_for_the_upstream_script(tmp_path):
    images(tmp_path / "dog", 2, (512, 512))
    outcome = diffusers(
        tmp_path,
        f"accelerate launch train_dreambooth.py --pretrained_model_name_or_path={SD15} "
        "--instance_data_dir=dog --instance_prompt=sks --max_train_steps=100 --use_ema --ema_decay 0.999",
    )
    assert outcome.exit_code == 1 and fate(outcome, "use_ema") == "invalid"
    assert "DBS403" not in codes(outcome) and "a fork" in messages(outcome, "DBS402")


# --- 8. python -m accelerate.commands.launch, Min-SNR with prior preservation ------------------------------


def test_min_snr_with_prior_preservation(tmp_path):
    images(tmp_path / "dog", 4, (512, 512))
    images(tmp_path / "class", 8, (64, 64), prefix="c")
    line = (
        "python -m accelerate.commands.launch --num_processes=1 train_dreambooth.py "
        f"--pretrained_model_name_or_path={SD15} --instance_data_dir=dog --instance_prompt='a sks dog' "
        "--class_data_dir=class --class_prompt='a dog' --with_prior_preservation --num_class_images=8 "
        "--snr_gamma=5 --max_train_steps=60 --lr_scheduler=linear --lr_warmup_steps=10 --train_batch_size={}"
    )
    one = diffusers(tmp_path, line.format(1))
    assert "mean of the instance and the class sample's Min-SNR weights" in messages(one, "DBS404")
    plan = plan_of(one, tmp_path)
    assert plan.loss.min_snr_gamma == 5.0 and plan.schedule.batch_size == 2
    assert_lrs(plan, diffusers_lrs("linear", 5e-6, 10, 60))
    two = diffusers(tmp_path, line.format(2))
    assert two.exit_code == 1 and "shapes do not broadcast" in messages(two, "DBS402")


# --- 9. SDXL LoRA with prior preservation at batch 2, random flips ------------------------------------------


def test_sdxl_prior_batch_two_flips_and_pairing(tmp_path):
    images(tmp_path / "dog", 4, (1024, 768))
    images(tmp_path / "class", 4, (1024, 1024), prefix="c")
    write(
        tmp_path / "launch.sh",
        f"""set -e
cd "$(dirname "$0")"
exec accelerate launch --mixed_precision=bf16 train_dreambooth_lora_sdxl.py \\
  --pretrained_model_name_or_path={SDXL} --instance_data_dir=dog --instance_prompt="photo of sks dog" \\
  --class_data_dir=class --class_prompt="photo of a dog" --with_prior_preservation --num_class_images=4 \\
  --train_batch_size=2 --random_flip --num_train_epochs=10 --checkpointing_steps=5 \\
  --lr_scheduler=cosine --lr_warmup_steps=2 --rank=8 --train_text_encoder
""",
    )
    outcome = diffusers(tmp_path, "launch.sh")
    said = messages(outcome, "DBS404")
    assert "every second instance image trains with the class prompt" in said
    assert "flip (p = 0.5) once" in said and "random square crop once" in said  # 4:3 images: the crop moves
    assert "size and crop of the instance image" in said
    plan = plan_of(outcome, tmp_path)
    assert plan.datasets[0].flip and not plan.datasets[1].flip  # class images are never flipped
    # max(4 class, 4 instance) = 4 pairs / batch 2 = 2 steps per epoch, 10 epochs
    assert plan.schedule.total_steps == 20 and plan.schedule.batch_size == 4
    assert plan.precision.mixed == "bf16" and plan.train_text_encoder
    assert_lrs(plan, diffusers_lrs("cosine", 1e-4, 2, 20))
    assert steps_of(plan.checkpoints.steps) == every_n(5, 20)


# --- 10. the SDXL LoRA script's Min-SNR: differs for v-prediction only ------------------------------------


def test_sdxl_min_snr_form_differs_for_v_prediction_only(tmp_path):
    images(tmp_path / "dog", 2, (1024, 1024))
    line = (
        "accelerate launch train_dreambooth_lora_sdxl.py --pretrained_model_name_or_path={} "
        "--instance_data_dir=dog --instance_prompt='a sks dog' --snr_gamma=5.0 --max_train_steps=100 "
        "--train_batch_size=1"
    )
    epsilon = diffusers(tmp_path, line.format(SDXL))
    assert "snr" not in messages(epsilon, "DBS404")
    plan = plan_of(epsilon, tmp_path)
    assert plan.loss.min_snr_gamma == 5.0 and plan.model.prediction == "epsilon"
    vpred = pipeline_folder(tmp_path / "vpred-xl", "EulerDiscreteScheduler", "v_prediction")
    outcome = diffusers(tmp_path, line.format(vpred))
    assert "min(snr, gamma)/snr + 1" in messages(outcome, "DBS404")


# --- 11. a file that launches two runs; options one per line ------------------------------------------------


def test_two_launches_convert_the_first_and_say_so(tmp_path):
    images(tmp_path / "dog", 2, (512, 512))
    write(
        tmp_path / "sweep.sh",
        f"""for LR in 1e-6 2e-6; do echo $LR; done
python3 prepare_images.py --src raw --dst dog
accelerate launch train_dreambooth.py --pretrained_model_name_or_path={SD15} --instance_data_dir=dog \\
  --instance_prompt=sks --max_train_steps=50 --learning_rate=1e-6 --lr_scheduler=constant
accelerate launch train_dreambooth_lora.py --pretrained_model_name_or_path={SD15} --instance_data_dir=dog \\
  --instance_prompt=sks --max_train_steps=50
""",
    )
    outcome = diffusers(tmp_path, "sweep.sh")
    assert "not converted: train_dreambooth_lora.py" in messages(outcome, "DBS407")
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter is None or plan.adapter.kind == "none"
    assert_lrs(plan, diffusers_lrs("constant", 1e-6, 0, 50))
