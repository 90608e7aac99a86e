#!/usr/bin/env bash
# Fetch the wheels that scripts/gpu_check.sh --wheels DIR installs on a GPU machine without network:
# what the suite needs beyond that machine's image (Python 3.12, torch 2.11, triton 3.6, numpy,
# pandas, seaborn, einops, tqdm, pyyaml, pillow, tabulate, portalocker): fvcore and what it needs
# (iopath, yacs, termcolor), nvidia-ml-py (NVML, for the clock watch), xformers built for
# torch >= 2.10, and NATTEN as pure Python (its Flex backend: PyPI has only its source, and its CUDA
# kernels take hours to compile). Run it where PyPI is reachable, with torch installed in $PYTHON
# (NATTEN's build imports it): the project's virtual environment does.
#
# Usage: scripts/fetch_gpu_wheels.sh DIR [--python-version 3.12]
set -euo pipefail

DIR="" PY=3.12
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PY="${2:?--python-version needs a version}"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) DIR="$1"; shift ;;
  esac
done
[ -n "$DIR" ] || { echo "fetch_gpu_wheels.sh: give the folder to fill" >&2; exit 2; }
mkdir -p "$DIR"

# Pure-Python packages, built here (fvcore and iopath are source distributions on PyPI).
python3 -m pip wheel --quiet --no-deps -w "$DIR" "fvcore==0.1.5.post20221221" "iopath==0.1.10" "yacs==0.1.8" \
  "termcolor==3.1.0" "nvidia-ml-py==13.580.82"
# NATTEN: built against the torch here, without its CUDA library (hidden GPUs keep a GPU machine from building it).
CUDA_VISIBLE_DEVICES="" "${PYTHON:-python3}" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DIR" \
  "natten==0.21.7"
# xformers: a binary wheel for the GPU machine's platform; 0.0.35 needs torch >= 2.10.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  --platform manylinux_2_28_x86_64 -d "$DIR" "xformers==0.0.35"
ls -l "$DIR"
