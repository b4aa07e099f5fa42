# Each target is complete by itself: it creates or refreshes .venv from requirements.txt (the pinned,
# tested CPU set) and installs the package into it (editable), then acts.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/digits

.PHONY: run test clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

run: $(VENV)/.installed  ## FitNets on the embedded digits: teacher → hint stage → KD stage.
	$(PY) -m fitnets_jax.main --config configs/digits.py --workdir $(WORKDIR)

test: $(VENV)/.installed  ## The whole test suite (CPU, no network).
	$(PY) -m pytest -q -n 2 --durations=15 tests

clean:
	rm -rf runs
