#!/usr/bin/env bash
# Sets up everything TADS needs on a fresh Debian/Ubuntu machine: system packages (Tesseract OCR,
# Debian's Fashion-MNIST for the demo pool) where missing, a virtual environment, and the project with
# every dependency pinned by constraints.txt. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

need_apt=()
command -v tesseract >/dev/null 2>&1 || need_apt+=(tesseract-ocr)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
# the UI test (tests/e2e/test_ui_browser.py) drives Debian's Chromium headless; Playwright never downloads a browser
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup: need root (or sudo) to run: apt-get install -y ${need_apt[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need_apt[@]}"; }
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.tads-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing TADS and its pinned dependencies into $VENV (a few minutes the first time)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' \
    2> >(grep -v "^WARNING: Location" >&2)
  touch "$stamp"
fi
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"expected torch 2.13.0, found {torch.__version__}"
import tads_assets  # noqa: F401  (makes torchvision importable on CPU torch)
import open_clip, torchvision  # noqa: F401
print(f"setup: ok (torch {torch.__version__}, torchvision {torchvision.__version__}, cuda={torch.cuda.is_available()})")
PY
