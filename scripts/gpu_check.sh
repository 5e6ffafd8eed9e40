#!/usr/bin/env bash
# The GPU check in one command, its results in one file (at most 14 minutes on one H200):
#   1. the GPU tests (pytest -m gpu);
#   2. a short bf16 and fp16 run of every LR method (40 steps of the character transformer,
#      task=charlm model=gpt, on CUDA), one line each: status, loss, lr, step time;
#   3. benchmarks/bench_methods.py --device cuda --size gpu (time and memory ratios against
#      AdamW) at the sizes of issue 21: the GPT (6 blocks x 384, context 256, batch 64) in
#      float32 and under bf16 autocast, ResNet-18 at batch 256;
#   4. with GPU_CHECK_TRAIN=1 (or --train): gen-train workload=charlm_gpt size=gpu
#      trainer.amp=bf16, lr=gen_exact against lr=cosine, GPU_CHECK_STEPS steps each (default
#      1000): the mean step time of each from summary.json;
#   5. GPU_CHECK_PARTS="5": issue 20's runs, gen-train workload=charlm_gpt size=gpu
#      trainer.amp=bf16 (4000 steps) with cosine, gen_exact and gen_parabola at their
#      defaults, seed 0: the final eval loss of each (about 4 minutes each on an H200).
#
#   bash scripts/gpu_check.sh [--train] [RESULTS]  # default: $OUT/gpu_check.txt if $OUT is set
#   bash scripts/gpu_check.sh --wheels      # here, once: hydra-core, omegaconf, antlr4 as wheels in .whl/
#   GPU_CHECK_PARTS="3" bash scripts/gpu_check.sh   # only some parts (default "1 2 3")
#
# It needs no installation: src/ and the repository root go on PYTHONPATH, so a bare machine
# with torch, torchvision, tensorboard, matplotlib, tqdm, pytest and hypothesis runs it
# from a checkout. Where hydra-core is missing (the tests import it) and .whl/ holds the
# wheels made by --wheels, they are installed into /tmp/site first (no network needed);
# without them the GPU tests run from tests/test_gpu.py alone. Without a CUDA device each
# part says so and is skipped: a dry run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if [ "${1:-}" = "--wheels" ]; then
  # Versions of this checkout's environment; antlr4 4.9.3 is published as a source archive
  # only, so its (pure Python) wheel is built here.
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p .whl "$(dirname "$exclude")" && { grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"; }
  for pkg in hydra-core omegaconf antlr4-python3-runtime; do
    version=$($PY -c "import importlib.metadata as m; print(m.version('$pkg'))")
    $PY -m pip wheel -q --no-deps -w .whl "$pkg==$version" || exit 1
  done
  ls .whl
  exit 0
fi

TRAIN=${GPU_CHECK_TRAIN:-0}
if [ "${1:-}" = "--train" ]; then TRAIN=1; shift; fi
PARTS=${GPU_CHECK_PARTS:-1 2 3}
[ "$TRAIN" = 1 ] && PARTS="$PARTS 4"
part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
RESULTS=${1:-${OUT:+$OUT/}gpu_check.txt}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if ! $PY -c "import hydra, omegaconf" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
: > "$RESULTS"
log() { echo "$*" | tee -a "$RESULTS"; }
cuda=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>/dev/null)
started=$(date +%s)
log "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
log "# $($PY -c 'import platform, torch; print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)'), device: ${cuda:-none}"

if part 1; then
log "## 1. GPU tests (pytest -m gpu)"
tests=tests
$PY -c "import hydra, omegaconf" 2>/dev/null || { tests=tests/test_gpu.py; log "hydra-core not importable: tests/test_gpu.py alone"; }
timeout 240 $PY -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m gpu -rs "$tests" 2>&1 | tail -n 40 | tee -a "$RESULTS"
fi

if part 2; then
log "## 2. bf16 and fp16 runs of every LR method (charlm + gpt, 40 steps)"
if [ -n "$cuda" ]; then
  timeout 150 $PY - <<'EOF' 2>&1 | tee -a "$RESULTS"
import math
import tempfile

from genlr.engine import RunSpec, TrainerConfig, train
from genlr.methods import METHODS


def number(value, fmt):
    return format(value if value is not None else math.nan, fmt)


print(f"{'lr method':14s} {'amp':5s} {'status':10s} {'final loss':>10s} {'lr final':>10s} {'ms/step':>8s}")
for lr in sorted(METHODS):
    for amp in ("bf16", "fp16"):
        spec = RunSpec(task={"name": "charlm", "max_chars": 200_000}, model={"name": "gpt", "depth": 2},
                       optimizer={"name": "adamw"}, lr={"name": lr},
                       trainer=TrainerConfig(device="cuda", amp=amp, max_steps=40, batch_size=32,
                                             progress=False, plots=False))
        with tempfile.TemporaryDirectory() as run_dir:
            s = train(spec, run_dir)
        print(f"{lr:14s} {amp:5s} {s['status']:10s} {number(s['final']['train_loss'], '10.4f')} "
              f"{number(s['lr']['final'], '10.3g')} {number(s['step_time_ms']['mean'], '8.1f')} "
              f"{s['message']}", flush=True)
EOF
else
  log "no CUDA device: skipped"
fi

fi

# The issue's table: AdamW, ExactGeN every step and at its defaults, ParabolaGeN's and Newt's
# defaults, Newt's zero-pass window, and the control row (the measurement's own spread).
CONFIGS="adamw again|gen_exact every=1 taylor|gen_exact (defaults)|gen_parabola (defaults)|newt (defaults)|newt window"
if part 3; then
log "## 3. benchmarks/bench_methods.py --device cuda --size gpu"
if [ -n "$cuda" ]; then
  for run in "gpt none" "gpt bf16" "resnet18 none"; do
    set -- $run
    log "### --model $1 --amp $2"
    timeout 150 $PY benchmarks/bench_methods.py --device cuda --size gpu --model "$1" --amp "$2" \
      --rounds 3 --block 8 --memory --only "$CONFIGS" 2>&1 | grep -v Warning | tee -a "$RESULTS"
  done
else
  log "no CUDA device: skipped"
  timeout 300 $PY benchmarks/bench_methods.py --size cpu --model small --rounds 1 --block 4 \
    --only "adamw again|gen_exact every=1 taylor" 2>&1 | grep -v Warning | tee -a "$RESULTS"
fi
fi

if part 4; then
log "## 4. gen-train workload=charlm_gpt size=gpu trainer.amp=bf16: gen_exact against cosine"
STEPS=${GPU_CHECK_STEPS:-1000}
if [ -n "$cuda" ]; then
  for lr in cosine gen_exact; do
    dir=$(mktemp -d)
    timeout 300 $PY -m gen_cli.train workload=charlm_gpt size=gpu trainer.amp=bf16 lr=$lr \
      trainer.max_steps=$STEPS trainer.eval_every=$STEPS trainer.plots=false trainer.progress=false \
      hydra.run.dir="$dir" >/dev/null 2>&1
    $PY -c "import json, sys; s = json.load(open(sys.argv[1] + '/summary.json')); t = s['step_time_ms']; print(f\"{sys.argv[2]:10s} {s['status']:10s} steps {s['steps']} step ms mean {t['mean']:.2f} median {t['median']:.2f} p90 {t['p90']:.2f} final loss {s['final']['train_loss']:.4f} paths {s.get('curvature_paths')}\")" "$dir" "$lr" 2>&1 | tee -a "$RESULTS"
  done
else
  log "no CUDA device: skipped"
fi
fi
if part 5; then
log "## 5. gen-train workload=charlm_gpt size=gpu trainer.amp=bf16: GeN against cosine, whole runs"
if [ -n "$cuda" ]; then
  for lr in cosine gen_exact gen_parabola; do
    dir=$(mktemp -d)
    timeout 420 $PY -m gen_cli.train workload=charlm_gpt size=gpu trainer.amp=bf16 lr=$lr \
      trainer.plots=false trainer.progress=false hydra.run.dir="$dir" >/dev/null 2>&1
    $PY -c "import json, sys; s = json.load(open(sys.argv[1] + '/summary.json')); print(f\"{sys.argv[2]:12s} {s['status']:10s} steps {s['steps']} final eval loss {s['final'].get('eval_loss', float('nan')):.4f} wall {s['wall_time_s']:.0f} s\")" "$dir" "$lr" 2>&1 | tee -a "$RESULTS"
  done
else
  log "no CUDA device: skipped"
fi
fi
log "# done in $(( $(date +%s) - started )) s -> $RESULTS"
