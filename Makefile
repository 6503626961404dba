# Two entry points: `make demo` (the main job) and `make test` (install everything, run the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= a red circle moving left
DEMO := outputs/demo

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Until the embedded shapes-world model ships, the demo runs a tiny official-layout checkpoint assembled from the
# reference fixtures (random weights) through the real convert -> generate path.
demo: $(STAMP)
	$(BIN)/python tests/tiny_checkpoint.py $(DEMO)/tiny_vc2.ckpt
	$(BIN)/vidiff convert $(DEMO)/tiny_vc2.ckpt $(DEMO)/model --num-head-channels 8 --text-heads 2 --overwrite
	$(BIN)/vidiff generate "$(PROMPT)" --model $(DEMO)/model --steps 10 --frames 8 --height 64 --width 64 \
		--fps 8 -o $(DEMO)/video.mp4 --gif --sheet

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/unet_forward.py
