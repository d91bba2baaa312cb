#!/usr/bin/env bash
# Start the tritonserver shipped in the nvidia-pytriton wheel on 127.0.0.1, in explicit
# model-control mode, on a model repository (default: the shipped model_repository/).
# Development and tests only: production uses the hospital's own Triton (see README.md here).
#
#   deploy/triton/start-local.sh [extra tritonserver options...]
#
# Environment (defaults in brackets):
#   TRITON_HOME          the folder `make triton-deps` filled [<repo>/.cache/triton]
#   TRITON_REPOSITORY    model repository [<repo>/model_repository]
#   TRITON_HTTP_PORT     [8000]   TRITON_GRPC_PORT [8001]   TRITON_METRICS_PORT [8002]
#
# The server replaces this shell (exec), so its PID is this script's: stop it with SIGTERM, and
# with SIGKILL if it does not stop (a Python-backend stub that cannot start makes it hang).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
home="${TRITON_HOME:-$root/.cache/triton}"
repository="${TRITON_REPOSITORY:-$root/model_repository}"
python="$home/venv/bin/python"

die() { echo "start-local.sh: $*" >&2; exit 2; }

[ -x "$python" ] || die "no Triton environment at $home/venv: run 'make triton-deps'"
read -r version site libdir < <("$python" -c 'import sys, sysconfig
print(f"{sys.version_info[0]}.{sys.version_info[1]}", sysconfig.get_paths()["purelib"],
      sysconfig.get_config_var("LIBDIR"))')
dist="$site/pytriton/tritonserver"
libs="$site/nvidia_pytriton.libs"
stub="$dist/python_backend_stubs/$version/triton_python_backend_stub"
[ -x "$dist/bin/tritonserver" ] || die "tritonserver not found in $dist: run 'make triton-deps'"
[ -x "$stub" ] || die "the wheel has no Python-backend stub for Python $version"

# The backend folder: the wheel's Python backend with the stub of the environment's Python.
backend="$home/backends/python"
mkdir -p "$backend"
for file in "$dist/backends/python/libtriton_python.so" \
            "$dist/backends/python/triton_python_backend_utils.py" "$stub"; do
  cmp -s "$file" "$backend/$(basename "$file")" || cp "$file" "$backend/"
done

export LD_LIBRARY_PATH="$libs:$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$home/venv/bin:$PATH"  # the stub starts the first python3 on PATH's environment

# Check the stub before any model loads: every library found, and the libpython it links is the
# environment's own version. A stub that cannot start makes a load hang for minutes.
missing="$(ldd "$backend/triton_python_backend_stub" | grep 'not found' || true)"
[ -z "$missing" ] || die "the Python-backend stub misses libraries: $missing"
ldd "$backend/triton_python_backend_stub" | grep "libpython$version\.so" >/dev/null \
  || die "the Python-backend stub does not link libpython$version"
"$python" -c 'import numpy, torch, monai' 2>/dev/null \
  || die "numpy, torch or monai missing from $home/venv: run 'make triton-deps'"

exec "$dist/bin/tritonserver" \
  --model-repository="$repository" \
  --model-control-mode=explicit \
  --backend-directory="$home/backends" \
  --cache-directory="$dist/caches" \
  --http-address=127.0.0.1 --http-port="${TRITON_HTTP_PORT:-8000}" \
  --grpc-address=127.0.0.1 --grpc-port="${TRITON_GRPC_PORT:-8001}" \
  --metrics-address=127.0.0.1 --metrics-port="${TRITON_METRICS_PORT:-8002}" \
  "$@"
