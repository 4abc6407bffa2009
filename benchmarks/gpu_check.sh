#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one go (about 4 minutes on an H100): the iteration
# profile, the GPU-path tests, Deep Dream, and augment against neural-style-pt at 512 px.
#
# Before, on a machine with the package registry and the benchmark photos:
#   pip download --no-deps --only-binary=:all: -d .whl neural-style==0.5.7
#   mkdir -p .bench/data/styles && cp -r PHOTOS/hymenoptera-mini .bench/data/ \
#     && cp STYLES/starry_night.jpg .bench/data/styles/
# Then, on the GPU machine, from the repository root (torch already installed there):
#   OUT=results bash benchmarks/gpu_check.sh
set -u -o pipefail
OUT=${OUT:-gpu_results}
DATA=${DATA:-.bench/data}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site PATH=/tmp/site/bin:$PATH
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: output to the terminal and $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
}
step profile_b45 60 python3 benchmarks/profile_iteration.py --batch 45 --height 512 --width 341 --history 100
step profile_b8 40 python3 benchmarks/profile_iteration.py --batch 8 --height 512 --width 512 --history 100
step gpu_tests 60 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
step dream 60 python3 benchmarks/seconds_per_image.py --engine dream --size 512 --images 22 --device cuda --data "$DATA"
step vs_peer 200 python3 benchmarks/vs_neural_style.py --gpu --size 512 --iterations 300 --augment-images 64 \
    --peer-images 2 --data "$DATA"
