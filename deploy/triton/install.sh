#!/usr/bin/env bash
# Install (or bring up to date) the local Triton's environment: a virtual environment under
# TRITON_HOME (default <repo>/.cache/triton) with nvidia-pytriton (tritonserver 2.51 and its
# Python backend), numpy<2, the CPU torch and MONAI, pinned by constraints.txt. Idempotent.
#
#   deploy/triton/install.sh            PYTHON=python3.11 deploy/triton/install.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
home="${TRITON_HOME:-$root/.cache/triton}"
python="${PYTHON:-python3}"

if [ ! -x "$home/venv/bin/python" ]; then
  "$python" -m venv "$home/venv"
  "$home/venv/bin/python" -m pip install -q --upgrade pip
fi
"$home/venv/bin/python" -m pip install -q -c "$here/constraints.txt" -r "$here/requirements.txt"

# The wheel carries a Python-backend stub per Python version; this environment's must be there.
"$home/venv/bin/python" - <<'PY'
import sys, sysconfig
from pathlib import Path
version = f"{sys.version_info[0]}.{sys.version_info[1]}"
site = Path(sysconfig.get_paths()["purelib"])
stub = site / "pytriton/tritonserver/python_backend_stubs" / version / "triton_python_backend_stub"
if not stub.is_file():
    sys.exit(f"install.sh: nvidia-pytriton has no Python-backend stub for Python {version}")
print(f"Triton environment ready in {sys.prefix} (Python {version})")
PY
