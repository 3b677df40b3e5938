#!/usr/bin/env bash
# Create or refresh the project's virtual environment at .venv/ and install the core and
# every plugin into it (editable). Idempotent: re-installs only when a pyproject.toml or
# constraints.txt changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.adjoint-core-installed
want=$(cat constraints.txt pyproject.toml plugins/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[bootstrap] .venv is up to date"
  exit 0
fi
echo "[bootstrap] installing core + plugins into .venv"
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
args=(-c constraints.txt -e ".[dev,docs]")
for p in plugins/*/; do args+=(-e "$p"); done
.venv/bin/python -m pip install --quiet "${args[@]}" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
echo "$want" > "$stamp"
echo "[bootstrap] done: $(.venv/bin/python -c 'import adjoint_core, torch; print("adjoint_core", adjoint_core.__version__, "torch", torch.__version__)')"
