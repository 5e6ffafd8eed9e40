#!/usr/bin/env bash
# The study behind GeN's band rule (docs/methods.md, "GeN on long noisy runs"), one seed,
# on the character LM (charlm_gpt) and the Fashion-MNIST CNN (fmnist_cnn) at their CPU size:
#   passive/  the probes at a pinned lr (lr_min = lr_max; the rule can't move it): what s*
#             says as training goes, at several lrs, on the next and on the same batch
#   rules/    each GeN variant under the band (gen-train's default), the paper's line search
#             (the previous default) and ablations of each, and Newt
# then one gen-report per folder (method_vs_step.png: lr, s*, slope, curvature, fallbacks,
# horizon scale). Every run goes through trainer.resume=auto: a rerun skips finished runs
# and continues cut ones. Two shells can share the work: one "lm", one "cnn".
#   bash scripts/gen_band_study.sh [OUT] [lm|cnn|all]      (default: outputs/gen_band all)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gen_band}
WHICH=${2:-all}

run() {  # run FOLDER OVERRIDES...
  local dir=$OUT/$1; shift
  .venv/bin/gen-train "$@" seed=0 trainer.log_every=4 trainer.progress=false trainer.resume=auto \
    hydra.run.dir="$dir" >/dev/null 2>&1 || true
  echo "$dir: $(grep -o '"status": "[a-z]*"' "$dir/summary.json" 2>/dev/null || echo 'no summary')"
}

pinned() {  # pinned FOLDER LR OVERRIDES...: the probes at a constant lr
  local name=$1 lr=$2; shift 2
  run "$name" optimizer.lr="$lr" lr.lr_min="$lr" lr.lr_max="$lr" lr.scale=constant "$@"
}

study() {  # study WORKLOAD LRS...
  local w=$1; shift
  for lr in "$@"; do pinned "$w/passive/exact-next-lr$lr" "$lr" workload="$w" lr=gen_exact; done
  pinned "$w/passive/exact-same-lr$1" "$1" workload="$w" lr=gen_exact lr.probe=same
  pinned "$w/passive/parabola-next-lr$1" "$1" workload="$w" lr=gen_parabola lr.every=4
  for m in gen_exact gen_parabola; do
    run "$w/rules/$m-band" workload="$w" lr=$m
    run "$w/rules/$m-band-window1" workload="$w" lr=$m lr.window=1
    run "$w/rules/$m-band-constant_scale" workload="$w" lr=$m lr.scale=constant
    run "$w/rules/$m-line_search" workload="$w" lr=$m lr.rule=line_search
    run "$w/rules/$m-line_search-constant_scale" workload="$w" lr=$m lr.rule=line_search lr.scale=constant
    run "$w/rules/$m-line_search-probe_same" workload="$w" lr=$m lr.rule=line_search lr.probe=same
  done
  run "$w/rules/newt" workload="$w" lr=newt
  for part in passive rules; do .venv/bin/gen-report "$OUT/$w/$part" --no-trajectories >/dev/null; done
}

[ "$WHICH" != cnn ] && study charlm_gpt 1e-3 3e-4 3e-3 1e-2
[ "$WHICH" != lm ] && study fmnist_cnn 1e-3
exit 0
