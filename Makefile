# Set-up and checks for a machine without ROS: everything installs into a virtual environment on
# first use. On a ROS 2 install use colcon instead (see README.md).
#   make test                        Python 3 (3.11+), ROS 2 Kilted wheels, onnxruntime-genai 0.18 (.venv)
#   make test PYTHON=python3.10      Kilted's cp310 wheels, onnxruntime-genai 0.11.4        (.venv-py3.10)
#   make test ROS_DISTRO=jazzy       Jazzy's wheels on Python 3.12, onnxruntime-genai 0.18  (.venv-jazzy)
#   make test-oldest-genai           onnxruntime-genai 0.4.0 on Python 3.10, no ROS   (.venv-oldest-genai)
# The same PYTHON= / ROS_DISTRO= work for demo, bench, soak and soak-faults.

# Only the command line picks the distro: a sourced ROS install sets ROS_DISTRO in the environment
# too, and its ROS is not one of these PyPI sets.
ifneq ($(origin ROS_DISTRO),command line)
ROS_DISTRO := kilted
endif
ifeq ($(ROS_DISTRO),jazzy)
DEFAULT_PYTHON := python3.12
else ifeq ($(ROS_DISTRO),kilted)
DEFAULT_PYTHON := python3
else
$(error ROS_DISTRO=$(ROS_DISTRO): the PyPI wheels these venvs use are kilted (the default) or jazzy; on a ROS install use colcon, see README.md)
endif
PYTHON ?= $(DEFAULT_PYTHON)
# Under pyenv a shim such as python3.10 answers only when PYENV_VERSION (or .python-version) names
# a 3.10; else the newest installed pyenv 3.10.x is used.
PYENV_ROOT ?= $(HOME)/.pyenv
PYTHON_EXE := $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null || \
	ls -d $(PYENV_ROOT)/versions/$(patsubst python%,%,$(notdir $(PYTHON))).*/bin/$(notdir $(PYTHON)) \
	2>/dev/null | sort -V | tail -n 1)
PYTHON_VERSION := $(if $(PYTHON_EXE),$(shell $(PYTHON_EXE) -c 'import sys; print("%d.%d" % sys.version_info[:2])'))

# One venv per leg: .venv for the default, else named after what differs.
LEG := $(if $(filter jazzy,$(ROS_DISTRO)),-jazzy)$(if $(filter $(DEFAULT_PYTHON),$(PYTHON)),,-py$(PYTHON_VERSION))
VENV ?= .venv$(LEG)
ifeq ($(ROS_DISTRO)-$(PYTHON_VERSION),jazzy-3.10)
$(error ROS_DISTRO=jazzy installs onnxruntime-genai 0.18, which has no Python 3.10 wheels: use python3.11 or python3.12 (the default))
else ifeq ($(ROS_DISTRO),jazzy)
REQUIREMENTS ?= requirements/dev-jazzy.txt
else ifeq ($(PYTHON_VERSION),3.10)
REQUIREMENTS ?= requirements/dev-py310.txt
else
REQUIREMENTS ?= requirements/dev.txt
endif
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .cache/demo
PYTEST_ARGS ?=

.PHONY: venv venv-oldest-genai demo test test-oldest-genai bench soak soak-faults cross-wheel clean

venv: $(STAMP)

$(STAMP): requirements/*.txt setup.py
	@test -n "$(PYTHON_EXE)" || { echo "$(PYTHON) not found: install it, or name it with PYTHON=" \
		"(with pyenv: PYENV_VERSION=<its version>)" >&2; exit 1; }
	@$(PYTHON_EXE) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
		echo "$(PYTHON) is Python $(PYTHON_VERSION): phi3v_ros needs 3.10 or newer" >&2; exit 1; }
	$(PYTHON_EXE) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r $(REQUIREMENTS)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
ifeq ($(ROS_DISTRO),jazzy)
	@# the Jazzy set only: a Kilted wheel would bring its own rclpy (9.x) or rcl (10.x)
	$(BIN)/pip list --format=freeze | grep -E '^ros-rclpy==7\.1\.'
	! $(BIN)/pip list --format=freeze | grep -E '^ros-(rclpy==9|rcl==10)'
endif
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m phi3v_ros.tools.demo --workdir $(DEMO_DIR)

test: $(STAMP)
	PHI3V_LEG_REQUIREMENTS=$(REQUIREMENTS) $(BIN)/python -m pytest test $(PYTEST_ARGS)

# The oldest onnxruntime-genai the engine runs (requirements/dev-oldest-genai.txt): the whole suite,
# whose ROS tests skip there (no rclpy); the tiny model is generated in the May-2024 layout 0.4 reads.
OLDEST_GENAI := PYTHON=python3.10 VENV=.venv-oldest-genai REQUIREMENTS=requirements/dev-oldest-genai.txt
venv-oldest-genai:
	$(MAKE) venv $(OLDEST_GENAI)

test-oldest-genai:
	$(MAKE) test $(OLDEST_GENAI)

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

# The same with faults (bench/faults/): worker SIGKILLs and SIGSTOPs, ~/cancel floods, ~/reset,
# runtime parameter changes, bad frames and prompt bursts while prompts flow; fails unless every prompt
# got one reply, the node's counters add up, the node lived and stopped cleanly and memory stayed flat.
# `make soak-faults SOAK_DURATION=120 SOAK_FAULTS_ARGS='--seed 2'`
SOAK_FAULTS_ARGS ?=
soak-faults: $(STAMP)
	mkdir -p .cache
	$(BIN)/python -m bench.soak --faults --duration $(SOAK_DURATION) --out .cache/soak_faults.json $(SOAK_FAULTS_ARGS)

# The Jetson's onnxruntime-genai wheel (aarch64, sm_87, CUDA 12, cp310) cross-built on this x86_64
# machine, read as a JetPack 6 Jetson would load it, then installed and run on Arm under qemu-user
# (import, the tiny model, a generation with provider cpu). Not part of `make test`: it needs the parts
# of docs/jetson.md 4d under XBUILD and the sources of 4c under SRC and DEPS. Measured on 2 cores:
# 3.8 min for the build, 16 s for the checks on Arm (a rerun resumes: only the checks run again).
#   make cross-wheel XBUILD=$$HOME/xbuild SRC=$$HOME/genai-src DEPS=$$HOME/genai-deps
XBUILD ?= $(HOME)/xbuild
SRC ?= $(HOME)/genai-src
DEPS ?= $(HOME)/genai-deps
ORT_HEADERS ?= $(HOME)/genai-build/apt-sid/x/usr/include/onnxruntime
CROSS_ARGS ?=
cross-wheel: $(STAMP)
	mkdir -p .cache
	$(BIN)/python -m bench.build_wheel --out .cache/build_wheel_cross.json -- --cross \
	    --python $(XBUILD)/venv310/bin/python --cuda-home $(XBUILD)/cuda-12.4-aarch64 \
	    --target-python-include $(XBUILD)/py310-aarch64/include/python3.10 \
	    --ort-source $(XBUILD)/ort/onnxruntime/capi --ort-headers $(ORT_HEADERS) \
	    --genai-version 0.9.2 --source $(SRC)/onnxruntime-genai-0.9.2 --deps-dir $(DEPS) \
	    --install-cmake --work-dir $(XBUILD)/work --emulator-python $(XBUILD)/py310-arm $(CROSS_ARGS)

clean:
	rm -rf .venv .venv-* .cache build install log .pytest_cache .hypothesis *.egg-info
