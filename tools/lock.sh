#!/usr/bin/env bash
# Refresh requirements/lock.txt: every dependency of dbspec and its test extra, resolved for Python 3.11+ on every
# platform (markers), except torch and what only torch needs (install the torch build for your hardware first).
#   tools/lock.sh            # newest releases allowed by pyproject.toml and requirements/constraints.txt
# Then run the tests from the new lock (bash .ci/run, or tools/check-latest.sh to see what the newest would do).
set -euo pipefail
cd "$(dirname "$0")/.."
uv=$(command -v uv || true)
if [ -z "$uv" ]; then  # a private copy of uv, from PyPI, outside the project's venv
  python3 -m venv .tools-venv
  .tools-venv/bin/pip install -q uv
  uv=.tools-venv/bin/uv
fi
out=$(mktemp)
"$uv" pip compile pyproject.toml --extra test --universal --python-version 3.11 \
  --override requirements/overrides.txt --constraint requirements/constraints.txt \
  --annotation-style line --custom-compile-command "tools/lock.sh" -q -o "$out"
# The override gives torch, and what only torch pulls in, a never-true marker: drop those lines.
grep -v "sys_platform == 'never'" "$out" > requirements/lock.txt.tmp
mv requirements/lock.txt.tmp requirements/lock.txt
rm -f "$out"
echo "requirements/lock.txt: $(grep -c '==' requirements/lock.txt) pins"
