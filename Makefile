# Two commands do all set-up: `make demo` and `make test`. Both are idempotent: the venv is
# rebuilt only when pyproject.toml or constraints.txt change.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,onnx,llm,peers,quant,factorize,search,postgres,mnist1d]'
	# torchvision and timm for the model matrix only, outside the venv's site-packages: see
	# tests/models/_torchvision.py (their presence there breaks transformers on CPU torch).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -c constraints.txt --upgrade --target $(VENV)/models torchvision timm
	# compressed-tensors 0.14, the last release with sparse compressors, checks netchisel's sparse
	# exports (tests/quantize/test_compressed_tensors_sparse.py runs it in a subprocess).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --upgrade --target $(VENV)/ct014 compressed-tensors==0.14.0.1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/netchisel demo

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy src/netchisel

pytest: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest

bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
