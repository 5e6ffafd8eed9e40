#!/usr/bin/env bash
# Set-up from a fresh clone, idempotent and quick the second time: Fashion-MNIST from
# Debian (where apt is available and we are root), and a virtual environment in .venv with
# genlr installed in editable mode plus the peers, launchers, the Optuna sweeper and test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } ||
    echo "setup: could not install dataset-fashion-mnist; gen-train will download it through torchvision"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.genlr-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,peers,launchers,tune]"
  touch "$stamp"
fi
