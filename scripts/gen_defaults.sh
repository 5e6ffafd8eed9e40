#!/usr/bin/env bash
# The study behind GeN's defaults (docs/suite.md, "GeN's defaults"): the `settle` start
# (off, down, any) from both ends of each workload's lr range and from its default lr, and the
# horizon-aware scale, for both GeN variants, one seed; the settle runs without the scale
# (gen-train's default before this study). Resumable: a rerun skips the runs
# whose summary.json says completed or diverged. Two shells can share the work by workload.
#   bash scripts/gen_defaults.sh [OUT] [cnn|mlp|all]      (default: outputs/gen_defaults all)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gen_defaults}
WHICH=${2:-all}

run() {  # run FOLDER OVERRIDES...: one gen-train run, unless it is already finished
  local dir=$OUT/$1; shift
  grep -qE '"status": "(completed|diverged)"' "$dir/summary.json" 2>/dev/null && return
  rm -rf "$dir"
  .venv/bin/gen-train "$@" seed=0 trainer.progress=false hydra.run.dir="$dir" >/dev/null 2>&1 || true
  echo "$dir: $(grep -o '"status": "[a-z]*"' "$dir/summary.json" 2>/dev/null || echo 'no summary')"
}

for method in gen_parabola gen_exact; do
  for settle in off down any; do
    if [ "$WHICH" != mlp ]; then  # AdamW: its range's ends and its default lr 1e-3
      for lr in 1e-5 1e-3 1e-1; do
        run "fmnist_cnn/$method-settle_$settle/lr$lr" workload=fmnist_cnn lr=$method \
          lr.scale=constant lr.settle=$settle optimizer.lr=$lr
      done
    fi
    if [ "$WHICH" != cnn ]; then  # SGD with momentum: its range's ends and its default 0.1
      for lr in 1e-4 0.1 1.0; do
        run "fmnist_mlp/$method-settle_$settle/lr$lr" workload=fmnist_mlp lr=$method \
          lr.scale=constant lr.settle=$settle optimizer.lr=$lr
      done
    fi
  done
  [ "$WHICH" != cnn ] && run "fmnist_mlp/$method-horizon/lr0.1" workload=fmnist_mlp lr=$method lr.scale=cosine lr.settle=off
done
exit 0
