# Set-up and checks for a machine without ROS: everything installs into .venv on first use.
# On a ROS 2 install use colcon instead (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .cache/demo
PYTEST_ARGS ?=

.PHONY: venv demo test bench soak soak-faults lint clean

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

# What the node costs on top of the model, side by side with the engine called directly (about 6 min on
# 2 cores); prints the table of the README's Benchmarks section and writes every number to bench/results.json.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench.run --out bench/results.json $(BENCH_ARGS)

# The long run (not part of `make test`): node + camera + a prompt every 3 s, memory and latency over time.
# bench/soak_results.json holds the recorded 30-minute run; this writes to .cache/ so it is not overwritten.
SOAK_DURATION ?= 1800
soak: $(STAMP)
	mkdir -p .cache
	$(BIN)/python -m bench.soak --duration $(SOAK_DURATION) --out .cache/soak_results.json

# The same with faults (bench/soak_faults.py): worker SIGKILLs and SIGSTOPs, ~/cancel floods, ~/reset,
# runtime parameter changes, bad frames and prompt bursts while prompts flow; fails unless every prompt
# got one reply, the node's counters add up, the node lived and stopped cleanly and memory stayed flat.
# `make soak-faults SOAK_DURATION=120 SOAK_FAULTS_ARGS='--seed 2'`
SOAK_FAULTS_ARGS ?=
soak-faults: $(STAMP)
	mkdir -p .cache
	$(BIN)/python -m bench.soak --faults --duration $(SOAK_DURATION) --out .cache/soak_faults.json $(SOAK_FAULTS_ARGS)

clean:
	rm -rf $(VENV) .cache build install log .pytest_cache .hypothesis *.egg-info
