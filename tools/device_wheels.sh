#!/usr/bin/env bash
# The wheels tools/device_check.sh installs on the GPU machine (Python 3.12, x86-64, torch / accelerate / hub
# already there, no network), at requirements/lock.txt's versions, into .whl/ (git-ignored via
# .git/info/exclude; carry [".whl"]): torchao apart in .whl/ao/ (only the isolated part sees it), bitsandbytes
# cut down to its CUDA 13.0 and CPU libraries so that everything fits the 64 MiB a run carries (~28 MB).
# Usage: bash tools/device_wheels.sh   (then: run `bash tools/device_check.sh --budget 320`, carry [".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
names="attrs cattrs diffusers importlib-metadata lazy-importer zipp packaging peft optimum-quanto rich typer
transformers tomli bitsandbytes lycoris-lora toml came-pytorch lion-pytorch prodigy-plus-schedule-free prodigyopt
pytorch-optimizer schedulefree torchao"
pins=$(for n in $names; do grep -m1 "^$n==" requirements/lock.txt | cut -d' ' -f1; done)
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl/ao
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins
mv -f .whl/torchao-*.whl .whl/ao/
python3 - <<'PY'
import glob, zipfile
for path in glob.glob(".whl/bitsandbytes-*.whl"):
    keep = lambda name: not ("libbitsandbytes_" in name and not name.split("libbitsandbytes_")[1].startswith(("cuda130.", "cpu.")))
    with zipfile.ZipFile(path) as z:
        items = [(i, z.read(i)) for i in z.infolist() if keep(i.filename)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in items:
            if info.filename.endswith("/RECORD"):
                data = b"\n".join(l for l in data.split(b"\n") if keep(l.split(b",")[0].decode())) + b"\n"
            z.writestr(info, data)
PY
du -sh .whl
