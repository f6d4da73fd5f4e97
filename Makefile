# The two commands: `make demo` and `make test`. Both install into .venv on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch/torchvision first, explicitly: on this project's machines these two lie on disk.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SCALE ?= small
DEMO_DIR ?= var/demo-$(SCALE)
PORT ?= 8501
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install browser demo test test-slow test-e2e lint fmt dashboard serve bench served results clean

install: $(STAMP)

# The browser test drives Debian's Chromium (never a downloaded browser build). Installed here when missing
# and we may (root with apt-get); otherwise that one test is skipped and says how to get it.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && echo "installing Chromium for the browser test (apt-get install chromium)" \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: no $(CHROMIUM) and no root apt-get: the browser test will be skipped (apt-get install -y chromium)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wherecnn demo --size $(SCALE) --out $(DEMO_DIR) $(if $(REBUILD),--rebuild,)

dashboard: $(STAMP)
	$(VENV)/bin/wherecnn dashboard --demo-dir $(DEMO_DIR) --port $(PORT)

serve: $(STAMP)
	$(VENV)/bin/wherecnn serve --demo-dir $(DEMO_DIR)

test: $(STAMP) browser
	$(VENV)/bin/ruff check platform services dashboards tests benchmarks
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP) browser
	$(VENV)/bin/python -m pytest -q -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check platform services dashboards tests benchmarks
	$(VENV)/bin/ruff format --check platform services dashboards tests benchmarks

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix platform services dashboards tests benchmarks
	$(VENV)/bin/ruff format platform services dashboards tests benchmarks

# every benchmark that needs no trained model (accuracy.py and served_accuracy.py take a world: see `served`)
bench: $(STAMP)
	for b in benchmarks/*.py; do case $$b in *accuracy.py|*results_table.py) continue;; esac; \
	  $(PY) $$b || exit 1; done

# the anywhere protocol through the demo's index and checkpoint (test places): panoramas with their heading
# (both protocols, city given and unknown), then, on the unseen cities, panoramas with the heading off by up
# to 20 degrees or unknown, 90-degree photos with it, 20 degrees off and without it, and 60-degree photos
# cut from the panoramas; then the README's table
SEED ?= 0
SERVED = $(PY) benchmarks/served_accuracy.py --data $(DEMO_DIR)/data --checkpoint $(DEMO_DIR)/checkpoint \
	  --store edge://$(abspath $(DEMO_DIR))/index --split test --per-city 30
SERVED_KIND = --protocols cross-area --no-tile-centre --no-unknown
served: $(STAMP)
	$(SERVED) --reference --out benchmarks/results/served-test-seed$(SEED).json
	$(SERVED) $(SERVED_KIND) --heading noisy --out benchmarks/results/served-test-seed$(SEED)-heading-noisy.json
	$(SERVED) $(SERVED_KIND) --heading unknown --out benchmarks/results/served-test-seed$(SEED)-heading-unknown.json
	$(SERVED) $(SERVED_KIND) --kind photo --out benchmarks/results/served-test-seed$(SEED)-photo.json
	$(SERVED) $(SERVED_KIND) --kind photo --heading noisy \
	  --out benchmarks/results/served-test-seed$(SEED)-photo-heading-noisy.json
	$(SERVED) $(SERVED_KIND) --kind photo --heading unknown \
	  --out benchmarks/results/served-test-seed$(SEED)-photo-heading-unknown.json
	$(SERVED) $(SERVED_KIND) --photo-fov 60 --out benchmarks/results/served-test-seed$(SEED)-photo60.json
	$(MAKE) results

results: $(STAMP)
	$(PY) benchmarks/results_table.py --write

clean:
	rm -rf var .pytest_cache
