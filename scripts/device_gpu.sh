#!/usr/bin/env bash
# The first run on a GPU machine that has no network (this workplace's `device` machines): its
# python3 already holds a CUDA build of torch and most of c3dfeat's needs; PyAV travels as a wheel.
#
#   make device-wheels                        # here, once: .whl/ (PyAV for the machine's Python)
#   run(command="bash scripts/device_gpu.sh", carry=[".whl"], timeout_s=600)
#   bash scripts/device_gpu.sh --device cpu --quick    # checks this script itself on a CPU
#
# It prints the machine, then runs scripts/bench_gpu.py (which runs tests/test_cuda.py first and
# prints no figure if they fail). Arguments go to bench_gpu.py. The log and the JSON land in $OUT
# (the device tool's folder that comes back), else in /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
site="$(mktemp -d)"
ls .whl/*.whl >/dev/null || { echo "no wheels in .whl/: run 'make device-wheels' and carry .whl" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import sys, torch, av; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'av', av.__version__)"
  echo "cpu cores: $(nproc)"
} 2>&1 | tee "$out/device.txt"
python3 scripts/bench_gpu.py --json "$out/bench_gpu.json" "$@" 2>&1 | tee "$out/bench_gpu.log"
