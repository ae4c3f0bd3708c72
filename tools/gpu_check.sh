#!/usr/bin/env bash
# The GPU check, for a session that is lent a device machine (CI never has one). One command does it all:
#
#   here, once:   echo /.whl/ >> .git/info/exclude
#                 python3 -m pip download --no-deps --only-binary=:all: -d .whl fastcore   # pure Python; the device image lacks it
#   then:         device run: command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=600
#
# It runs, in two budgets that leave a 10-minute device call room for a rerun, and writes everything under $OUT (or
# gpu-results/ elsewhere); quote the card's name (nvidia-smi.txt) with every number taken from it:
#   1. the CUDA tests, under 2 minutes (timeout 110 s): the rotary kernel, the attention kernel and the registry-wide
#      conformance tests, with `-n 4` where pytest-xdist is installed; cuda-tests.txt ends with a one-line summary;
#   2. the benchmarks, under 4 more minutes: `posexplorer bench` (rotary, then --attention), then the paper kernels'
#      tests and benchmarks of the learned and coordinate notebooks.
set -uo pipefail
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 4")
start=$SECONDS
timeout 110 python3 -m pytest -q -p no:cacheprovider $XDIST --durations=10 tests/test_kernels.py tests/test_attention_kernel.py tests/test_conformance.py > "$OUT/cuda-tests-full.txt" 2>&1
rc=$?
tail -40 "$OUT/cuda-tests-full.txt" > "$OUT/cuda-tests.txt"
echo "SUMMARY cuda tests: rc=$rc ($([ $rc = 124 ] && echo 'timed out at 110 s' || echo 'finished')) in $((SECONDS - start)) s; $(grep -E '[0-9]+ (passed|failed)' "$OUT/cuda-tests-full.txt" | tail -1)" | tee -a "$OUT/cuda-tests.txt"
bench() { timeout "$1" python3 -c "import sys; from posexplorer.tools.cli import main; sys.exit(main(sys.argv[1:]))" bench --no-progress "${@:2}"; }
bench 100 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
bench 70 --attention --json "$OUT/bench-attention.json" 2>&1 | tee "$OUT/bench-attention.txt"
# The paper kernels of the learned and coordinate notebooks: their tests on the GPU, then each one's benchmark
# (Triton against its torch reference; the closing notes quote these as the kernels' speedups).
timeout 40 python3 -m pytest -q -p no:cacheprovider $XDIST tests/test_comrope.py tests/test_carope.py tests/test_ucpe.py tests/test_spherical_harmonics.py 2>&1 | tail -20 | tee "$OUT/cuda-tests-papers.txt"
timeout 30 python3 - <<'PY' 2>&1 | tee "$OUT/bench-papers.txt"
import json, os
from posexplorer.tools.bench_comrope import bench_comrope
from posexplorer.tools.bench_carope import bench_carope
from posexplorer.tools.bench_ucpe import bench_ucpe
from posexplorer.tools.bench_spherical_harmonics import bench_spherical
rows = {}
for name, fn in (("comrope", bench_comrope), ("carope", bench_carope), ("ucpe", bench_ucpe), ("spherical", bench_spherical)):
    try: rows[name] = fn()
    except Exception as e: rows[name] = f"{type(e).__name__}: {e}"
    print(name, json.dumps(rows[name], default=str, indent=1))
json.dump(rows, open(os.path.join(os.environ.get("OUT", "gpu-results"), "bench-papers.json"), "w"), default=str, indent=1)
PY
