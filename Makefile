# `make demo` and `make test` do all set-up on a fresh machine: a virtual environment in .venv
# with torch pinned in the same pip command as everything else (an unpinned torch pulls CUDA).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SDL_VIDEODRIVER ?= dummy
export SDL_AUDIODRIVER ?= dummy

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/run.py --agent forager --episodes 1 --max-steps 800 --record out/demo.gif

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python scripts/bench.py --out out/bench.json

clean:
	rm -rf $(VENV) out
