# Set-up and checks for a machine without ROS: everything installs into .venv on first use.
# On a ROS 2 install use colcon instead (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .cache/demo
PYTEST_ARGS ?=

.PHONY: venv demo test bench soak lint clean

venv: $(STAMP)

$(STAMP): requirements/*.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m phi3v_ros.tools.demo --workdir $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest test $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.node_overhead --out bench/results.json

clean:
	rm -rf $(VENV) .cache build install log .pytest_cache .hypothesis *.egg-info
