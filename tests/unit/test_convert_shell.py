"""Command-line parsing the converters share: which command is the launch, and the argv the script sees."""

from __future__ import annotations

import pytest

from convert_kit import SD15, codes, empty_hub_cache, images, kohya, plan_of, write  # noqa: F401
from dbspec.convert.common.launcher import launcher_options
from dbspec.convert.common.shell import split_command

DIFFUSERS = ("train_dreambooth", "train_dreambooth_lora", "train_dreambooth_lora_sdxl")


def test_the_launch_not_the_download_of_the_script():
    text = """wget https://raw.githubusercontent.com/huggingface/diffusers/main/examples/dreambooth/train_dreambooth.py
curl -LO https://example.com/train_dreambooth.py && chmod +x train_dreambooth.py
accelerate launch --num_processes 1 train_dreambooth.py --seed 1
"""
    command = split_command(text, scripts=DIFFUSERS)
    assert command.launcher == ("accelerate", "launch", "--num_processes", "1")
    assert (command.script, command.args) == ("train_dreambooth.py", ("--seed", "1"))
    assert split_command(text).args == ("--seed", "1")  # without known names too: a launch beats a download


@pytest.mark.parametrize(
    ("line", "wrapper", "launcher"),
    [
        ("python3 -u train_dreambooth.py --seed 1", (), ("python3", "-u")),
        ("CUDA_VISIBLE_DEVICES=0,1 nohup python train_dreambooth.py --seed 1 > log.txt 2>&1 &",
         ("CUDA_VISIBLE_DEVICES=0,1", "nohup"), ("python",)),
        ("srun -N1 --gres=gpu:1 torchrun --nproc_per_node 1 --standalone train_dreambooth.py --seed 1",
         ("srun", "-N1", "--gres=gpu:1"), ("torchrun", "--nproc_per_node", "1", "--standalone")),
        ("python -m accelerate.commands.launch --mixed_precision=fp16 train_dreambooth.py --seed 1",
         (), ("python", "-m", "accelerate.commands.launch", "--mixed_precision=fp16")),
        ("python -m torch.distributed.run --nproc-per-node=2 train_dreambooth.py --seed 1",
         (), ("python", "-m", "torch.distributed.run", "--nproc-per-node=2")),
        ("docker run --gpus all --rm -v $(pwd):/w -w /w img:1 python train_dreambooth.py --seed 1 |& tee log",
         ("docker", "run", "--gpus", "all", "--rm", "-v", "$(pwd):/w", "-w", "/w", "img:1"), ("python",)),
        ("conda run -n db accelerate launch --config_file cfg.yaml train_dreambooth.py --seed 1",
         ("conda", "run", "-n", "db"), ("accelerate", "launch", "--config_file", "cfg.yaml")),
        ("./train_dreambooth.py --seed 1", (), ()),
    ],
)  # fmt: skip
def test_wrappers_before_the_launcher(line, wrapper, launcher):
    command = split_command(line, scripts=DIFFUSERS)
    assert (command.wrapper, command.launcher, command.script) == (wrapper, launcher, "train_dreambooth.py")
    assert command.args == ("--seed", "1")


def test_bash_c_strings_are_commands_and_see_exported_variables_only():
    text = """export MODEL=sd15
LOCAL=only-here
docker run img bash -lc 'cd /w && accelerate launch train_dreambooth.py --m=$MODEL --l=$LOCAL'
"""
    command = split_command(text, scripts=DIFFUSERS)
    assert command.script == "train_dreambooth.py" and command.args == ("--m=sd15", "--l=$LOCAL")
    inner = split_command('LOCAL=x\nsh -c "python train_dreambooth.py --l=$LOCAL"', scripts=DIFFUSERS)
    assert inner.args == ("--l=x",)  # double quotes: the outer shell expands it


def test_unquoted_variables_are_word_split_and_recorded():
    text = 'PROMPT="a photo of  sks dog"\nEMPTY=\npython train_dreambooth.py --p=$PROMPT $EMPTY --q "$PROMPT"'
    command = split_command(text)
    assert command.args == ("--p=a", "photo", "of", "sks", "dog", "--q", "a photo of  sks dog")
    assert command.split == (("PROMPT", "a photo of  sks dog"),)
    assigned = split_command('P="a b"\nQ=$P\npython train_dreambooth.py --q=$Q')
    assert assigned.args == ("--q=a", "b")  # the assignment keeps the words; the unquoted use splits them


def test_parameter_defaults_and_command_substitution():
    text = "RES=${RES:-768}\npython train_dreambooth.py --r=$RES --s=${UNSET:-512} --o=out_$(date +%s)"
    assert split_command(text).args == ("--r=768", "--s=512", "--o=out_$(date +%s)")


def test_later_launches_of_known_scripts_are_named():
    text = (
        "accelerate launch train_dreambooth.py --a\npython -u train_dreambooth_lora.py --b\npython other.py"
    )
    command = split_command(text, scripts=DIFFUSERS)
    assert command.script == "train_dreambooth.py" and command.others == ("train_dreambooth_lora.py",)


def test_launcher_options_of_torchrun_and_python_m():
    torchrun = split_command("torchrun --nproc-per-node=2 --master_port 29500 train_dreambooth.py --x 1")
    options = launcher_options(torchrun)
    assert options["nproc_per_node"].value == "2" and options["master_port"].value == "29500"
    launch = split_command("python -m accelerate.commands.launch --num_processes 2 train_dreambooth.py")
    assert launcher_options(launch)["num_processes"].key == "accelerate launch --num_processes"


def test_kohya_launch_after_a_download_and_in_a_container(tmp_path):
    images(tmp_path / "train" / "10_sks dog", 3, (512, 512))
    write(
        tmp_path / "train.sh",
        f"""git clone https://github.com/kohya-ss/sd-scripts && cd sd-scripts
wget -q https://example.com/train_db.py -O train_db.py
export MODEL="{SD15}"
docker run --gpus all -v $PWD:/w kohya:latest bash -c "accelerate launch --num_cpu_threads_per_process 1 \\
  train_db.py --pretrained_model_name_or_path=$MODEL --train_data_dir=train --output_dir=out \\
  --resolution=512 --train_batch_size=1 --max_train_steps=30 --mixed_precision=fp16 --seed 3"
""",
    )
    outcome = kohya(tmp_path, command="train.sh")
    plan = plan_of(outcome, tmp_path)
    assert plan.schedule.total_steps == 30 and plan.schedule.seed == 3 and "DBS402" not in codes(outcome)
