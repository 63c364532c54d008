# Two commands on a fresh machine with only Python 3.10+ and make:
#   make test       lint, format check, import layers, mypy --strict, pytest, Sphinx (warnings are errors)
#   make reproduce  the paper pipeline, quick profile, on synthetic data unless DATA_DIR is set
#   make reproduce-conditions  all five RSNA 2024 conditions (beyond the paper; quick profile
#                   about 25 minutes on two cores)
#   make reproduce-seeds  the same over SEEDS (default 0 1 2), then mean ± sd of the comparative
#                   claims (on demand only; about three quick runs' time)
# Both create .venv on first use. `make check VENV=/path/to/venv` runs the checks in an
# existing environment without installing anything.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lumbarssl-installed
PROFILE ?= quick
OUT ?= outputs/reproduce-$(PROFILE)
DATA_DIR ?=
SEED ?= 0
SEEDS ?= 0 1 2

.PHONY: test check lint typecheck pytest docs reproduce reproduce-conditions reproduce-seeds install bench clean

test: $(STAMP)
	$(MAKE) check VENV=$(VENV)

install: $(STAMP)

# torch/torchvision first from the pinned pair, then the package with every extra the checks use.
$(STAMP): pyproject.toml requirements/torch.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements/torch.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q -c requirements/torch.txt -e ".[dev,bench]"
	touch $(STAMP)

check: lint typecheck pytest docs docs-offline install-check

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck:
	$(BIN)/mypy --strict lumbarssl tests examples benchmarks

pytest:
	$(BIN)/python -m pytest -q

docs:
	rm -rf docs/_build docs/api/generated
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html

# The built docs load nothing from the network: equations are typeset by the MathJax copied
# into _static (sphinx-mathjax-offline), for readers on air-gapped networks.
.PHONY: docs-offline install-check
docs-offline: docs
	$(BIN)/python docs/check_offline.py docs/_build/html

# The wheel, installed into a clean venv at the lowest versions pyproject.toml allows (the
# PyTorch pair from requirements/torch.txt), runs `lumbarssl --help`, a 2-study
# `lumbarssl synth` and INSTALL_TESTS there (tools/install_check.py).
INSTALL_TESTS ?= tests/test_package.py tests/test_metrics_classification.py \
	tests/test_metrics_rsna.py tests/test_data_splits.py tests/test_data_roi.py \
	tests/test_data_dicom.py tests/test_synth_phantom.py tests/test_synth_dicom.py \
	tests/test_losses_focal.py
install-check:
	$(BIN)/python tools/install_check.py --tests $(INSTALL_TESTS)

reproduce: $(STAMP)
	$(BIN)/python examples/reproduce_paper.py --profile $(PROFILE) --out $(OUT) --seed $(SEED) \
		$(if $(DATA_DIR),--data-dir $(DATA_DIR),)

reproduce-conditions: $(STAMP)
	$(BIN)/python examples/reproduce_paper.py --conditions all --profile $(PROFILE) \
		--out $(OUT)-conditions --seed $(SEED) $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

reproduce-seeds: $(STAMP)
	for s in $(SEEDS); do \
		$(BIN)/python examples/reproduce_paper.py --profile $(PROFILE) --out $(OUT)-seed$$s \
			--seed $$s $(if $(DATA_DIR),--data-dir $(DATA_DIR),) || exit 1; \
	done
	$(BIN)/python examples/aggregate_seeds.py $(foreach s,$(SEEDS),$(OUT)-seed$(s)) --out $(OUT)-seeds

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf docs/_build docs/api/generated .mypy_cache .ruff_cache .pytest_cache
