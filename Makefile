# Two entry points: `make demo` (the main job) and `make test` (install everything, run the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= a blue square moving up
IMAGE ?= src/vidiff/assets/examples/red_circle.png
MOTION ?= a red circle moving right
STILL ?= a large yellow triangle
DEMO := outputs/demo
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser demo test lint bench

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The web-demo tests (tests/test_serve.py) drive Debian's Chromium through Playwright (no browser download): install it
# where it is missing.
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		command -v apt-get >/dev/null || { echo "make browser: no apt-get here; install Chromium as $(CHROMIUM)"; exit 1; }; \
		echo "installing Debian's chromium for the web-demo tests"; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	fi

# The main job: a video from a prompt with the embedded shapes-world text-to-video model, an animation of an image with
# the embedded image-to-video model, and an image from the text-to-image base they start from
# (src/vidiff/assets/models/shapes_t2v, shapes_i2v, shapes_t2i). Each prints what the probes read from its output.
demo: $(STAMP)
	$(BIN)/vidiff generate "$(PROMPT)" -o $(DEMO)/video.mp4 --gif --sheet --threads 1
	$(BIN)/vidiff animate "$(IMAGE)" "$(MOTION)" -o $(DEMO)/animation.mp4 --gif --sheet --threads 1
	$(BIN)/vidiff generate "$(STILL)" -o $(DEMO)/image.png --threads 1

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/unet_forward.py
