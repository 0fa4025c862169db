#!/usr/bin/env bash
# One short check of a CUDA GPU machine (under 8 minutes once `make data` has built the shards):
#   1. the `gpu` tests (tests/test_gpu.py): bf16-mixed training steps of both stages, xformers = SDPA when
#      xformers is installed, DDP over 2 GPUs when there are 2 or more;
#   2. the step benchmark in bf16 (`python -m isa4d.bench.steps --device cuda --precision bf16-mixed`), with
#      its MFU against the measured bf16 matmul peak: experiments/bench/gpu/steps.md and steps.json; the
#      tests' summary goes to experiments/bench/gpu/tests.txt.
#
# Usage: bash scripts/gpu_check.sh        (from a clone after `make install`; in the Docker image, with the
#        clone mounted at /workspace: docker run --gpus all --ipc=host -v $PWD:/workspace --entrypoint bash
#        isa4d:latest scripts/gpu_check.sh)
#   Environment: ISA4D_PYTHON (default: .venv/bin/python, else python3), GPU_CHECK_OUT (experiments/bench/gpu),
#   BENCH_ARGS (extra arguments of the benchmark, e.g. "--dit-override model.dit.name=small").
# Exit status: 0 all passed; 1 a test or the benchmark failed; 3 no CUDA GPU (or no Python / data).
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "gpu_check: $*" >&2
    exit 3
}

PY=${ISA4D_PYTHON:-}
if [ -z "$PY" ]; then
    PY=python3
    if [ -x .venv/bin/python ] && .venv/bin/python -c "" 2>/dev/null; then PY=.venv/bin/python; fi
fi
command -v "$PY" >/dev/null || die "no Python at $PY: run make install (or set ISA4D_PYTHON)"

# No environment or no GPU: one line, before anything else runs.
"$PY" - <<'EOF' || exit 3
import sys

try:
    import torch

    import isa4d  # noqa: F401
except ImportError as error:
    sys.exit(f"gpu_check: {sys.executable} cannot import the suite ({error}): run make install (or set ISA4D_PYTHON)")

if not torch.cuda.is_available():
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    sys.exit(
        f"gpu_check: no CUDA GPU visible (torch {torch.__version__}, {build}, "
        f"CUDA_VISIBLE_DEVICES={__import__('os').environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}): "
        "run this on a machine with an NVIDIA GPU and driver."
    )
names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(f"gpu_check: torch {torch.__version__} (CUDA {torch.version.cuda}), {len(names)} GPU(s): {', '.join(names)}")
EOF

if [ ! -f data/shards/synth/.complete ] || [ ! -f data/shards/real/.complete ]; then
    command -v make >/dev/null || die "data/shards is missing and make is not installed: run make data in the clone first"
    echo "gpu_check: building the datasets first (make data; not part of the 8 minutes)"
    make data
fi

OUT=${GPU_CHECK_OUT:-experiments/bench/gpu}
mkdir -p "$OUT"
status=0
start=$SECONDS

echo "gpu_check: [1/2] GPU tests (pytest -m gpu tests/test_gpu.py)"
timeout 300 "$PY" -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" || status=1
# The summary (failures, skips and the counts) without the warnings and tracebacks above it.
sed -n '/short test summary info/,$p' "$OUT/tests.log" >"$OUT/tests.txt"
[ -s "$OUT/tests.txt" ] || tail -n 1 "$OUT/tests.log" >"$OUT/tests.txt"
rm -f "$OUT/tests.log"

echo "gpu_check: [2/2] bf16 step benchmark -> $OUT/steps.md"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
timeout 240 "$PY" -m isa4d.bench.steps --device cuda --precision bf16-mixed --peak-size 8192 \
    --peak-repeats 20 --warmup 3 --steps 10 --top-ops 0 --out "$OUT" --name steps ${BENCH_ARGS:-} || status=1

if [ "$status" -eq 0 ]; then
    echo "gpu_check: passed in $((SECONDS - start)) s; benchmark: $OUT/steps.md"
else
    echo "gpu_check: FAILED (see above) after $((SECONDS - start)) s" >&2
fi
exit "$status"
