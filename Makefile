# Two entry points for a fresh machine: `make demo` (set up, segment the bundled sample tile with
# the bundled model, then open it in napari with the Segment widget docked when there is a display)
# and `make test` (set up, `make lint`, run the whole test suite under a virtual X server).
# `make lint`: ruff's lint rules, ruff's formatting (checked, never rewritten), mypy held to its baseline and the
# napari plugin checks (the manifest validates; no Qt binding depended on or imported). pre-commit runs the same.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps demo lint test

# napari needs a real GL context (Xvfb) and Qt's xcb libraries in headless tests and screenshots.
system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && ! command -v Xvfb >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 \
		libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxkbcommon-x11-0 libgl1 \
		libegl1 libdbus-1-3 >/dev/null; fi

$(BIN)/napari-cdal: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[testing]'
	touch $@

setup: system-deps $(BIN)/napari-cdal

demo: setup
	$(BIN)/napari-cdal segment --sample --out out --overwrite --save-steps --save-attention --save-uncertainty
	@echo ""
	@echo "Done: out/ holds the sample's labels (one id per nucleus) and the maps behind them. Next:"
	@echo "  $(BIN)/napari-cdal view --sample           napari with the sample and the Segment widget"
	@echo "  $(BIN)/napari-cdal segment MY_TILE.tif --out out   your own tile (--mpp 0.5 for 20x)"
	@echo "  $(BIN)/napari-cdal --help                  every command; or: source $(BIN)/activate"
	@echo "  README.md and docs/user_guide.md           opening the labels in napari, fine-tuning"
	@if [ -n "$$DISPLAY" ]; then $(BIN)/napari-cdal view --sample; \
	else echo "no display (\$$DISPLAY unset): skipping 'napari-cdal view --sample'"; fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/mypy_gate.py
	$(BIN)/python tools/napari_plugin_checks.py

test: lint
	$(BIN)/python -m pytest
