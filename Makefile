# Two set-up commands (see README): `make run` and `make test`. Both create the project-local
# environment .venv on first use (CPU torch 2.13.0 via constraints.txt, never a CUDA build).
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.fedsim-installed
PYTEST_ARGS ?=
# test files run in 2 pytest-xdist workers (one file stays in one worker: its fixtures and processes); 0: serial
PYTEST_WORKERS ?= 2

.PHONY: install run test bench clean-runs

$(STAMP): pyproject.toml requirements.lock constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -c constraints.txt -r requirements.lock
	$(VENV)/bin/pip install --disable-pip-version-check -q -c constraints.txt --no-deps -e .
	$(VENV)/bin/pip check
	touch $(STAMP)

install: $(STAMP)

## the main job: FedE-TransE on UMLS, 3 clients, Flower simulation on Ray (writes runs/<run-id>/)
run: $(STAMP)
	$(VENV)/bin/fedsim run

## the test suite; pytest's exit 5 (no tests collected) is a failure here
test: $(STAMP)
	@$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(VENV)/bin/fedsim bench fkge --out bench-results/fkge.json
