#!/usr/bin/env bash
# Regenerate the README's results: the method comparison (tune the cosine baseline, re-run
# its best lr over 3 seeds, every method and peer at its defaults), the learning-rate
# sensitivity sweep, and the synthetic 2-D figure; one gen-report per experiment.
#   bash scripts/run_experiments.sh [OUT]        (default: outputs/results)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/results}
BIN=.venv/bin
D=$OUT/method_comparison

$BIN/gen-train experiment=method_comparison_tune hydra.sweep.dir=$OUT/method_comparison_tune
best=$($BIN/gen-report $OUT/method_comparison_tune --best-by eval/acc | tee /dev/stderr |
       sed -n 's/.*best adamw + cosine.*optimizer\.lr=\([0-9.e+-]*\).*/\1/p' | head -n 1)
[ -n "$best" ] || { echo "run_experiments: no best lr found in the tuning report" >&2; exit 1; }
$BIN/gen-train experiment=method_comparison_tune optimizer.lr="$best" seed=0,1,2 hydra.sweep.dir=$D/baseline
$BIN/gen-train experiment=method_comparison hydra.sweep.dir=$D/methods
# GeN without the paper's horizon-aware scale (gen-train's default until 2026-11-30)
$BIN/gen-train experiment=method_comparison lr=gen_exact,gen_parabola lr.scale=constant hydra.sweep.dir=$D/constant_scale
$BIN/gen-train experiment=method_comparison_peers hydra.sweep.dir=$D/peers
$BIN/gen-report $D

$BIN/gen-train experiment=lr_sensitivity hydra.sweep.dir=$OUT/lr_sensitivity
$BIN/gen-report $OUT/lr_sensitivity

$BIN/gen-report --synthetic $OUT/synthetic

# Overhead ratios in the same process (README tables)
.venv/bin/python benchmarks/bench_engine.py | tee $OUT/bench_engine.txt
.venv/bin/python benchmarks/bench_methods.py --memory | tee $OUT/bench_methods.txt
