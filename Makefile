# Two entry points: `make demo` (the main job) and `make test` (install everything, run the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= a blue square moving up
IMAGE ?= src/vidiff/assets/examples/red_circle.png
MOTION ?= a red circle moving right
DEMO := outputs/demo

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job: a video from a prompt with the embedded shapes-world text-to-video model, then an animation of an image
# with the embedded image-to-video model (src/vidiff/assets/models/shapes_t2v, shapes_i2v).
demo: $(STAMP)
	$(BIN)/vidiff generate "$(PROMPT)" -o $(DEMO)/video.mp4 --gif --sheet
	$(BIN)/vidiff animate "$(IMAGE)" "$(MOTION)" -o $(DEMO)/animation.mp4 --gif --sheet

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/unet_forward.py
