#!/usr/bin/env bash
# Sets up one Ray node of a skytrain cluster (the `setup_commands` of infra/ray/*.yaml run it).
#
# Installs the mounted checkout (~/skytrain, see `file_mounts`) into a Python 3.11 virtualenv, so
# the node gets exactly pyproject.toml's pins: Ray 2.60.0 with [default] (dashboard, Jobs API),
# torch 2.13.0 (from PyPI: the CUDA build on Linux x86_64), MLflow, boto3, ... Nothing else is
# installed into it; what the provider's image brings (its conda envs, its Ray) is left unused.
# Safe to run again: `ray up` on a running cluster reruns it.
set -euo pipefail

PROJECT_DIR="${SKYTRAIN_PROJECT_DIR:-$HOME/skytrain}"
VENV="$HOME/skytrain-venv"
# uv is used only to get Python 3.11 (pyproject: >=3.11,<3.12), which not every image has.
UV_VERSION="0.13.8"

if [ ! -f "$PROJECT_DIR/pyproject.toml" ]; then
    echo "install_node.sh: $PROJECT_DIR/pyproject.toml is missing: run 'ray up' from the repository root" >&2
    exit 1
fi

if [ ! -x "$HOME/.local/bin/uv" ] || [ "$("$HOME/.local/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    curl -LsSf "https://astral.sh/uv/$UV_VERSION/install.sh" | env UV_INSTALL_DIR="$HOME/.local/bin" INSTALLER_NO_MODIFY_PATH=1 sh
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$HOME/.local/bin/uv" venv --seed --python 3.11 "$VENV"
fi

"$VENV/bin/python" -m pip install --quiet --editable "$PROJECT_DIR"
"$VENV/bin/python" -m pip check

# Ray's start commands and every SSH session use this virtualenv's `ray` and `python`.
ACTIVATE="source $VENV/bin/activate"
grep -qxF "$ACTIVATE" "$HOME/.bashrc" || echo "$ACTIVATE" >> "$HOME/.bashrc"

# A GPU node must train on its GPU: refuse to join with a CPU-only torch or an unusable driver.
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
    "$VENV/bin/python" - << 'EOF'
import sys

import torch

if torch.version.cuda is None:
    sys.exit(f"install_node.sh: torch {torch.__version__} is a CPU build on a GPU node")
if not torch.cuda.is_available():
    sys.exit(
        f"install_node.sh: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: "
        "the image's NVIDIA driver is too old for it; use a newer image"
    )
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF
fi
