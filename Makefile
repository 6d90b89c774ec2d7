# Set-up is part of every target: on a fresh machine `make demo` or `make test`
# creates .venv, installs the pinned requirements and builds rubricrl._C.
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
# Tests and benchmarks: 2 threads, like CI's machine.
export OMP_NUM_THREADS ?= 2

.PHONY: all build demo test test-python test-cpp test-cuda-compile bench clean

all: build

$(DEPS): requirements.txt requirements-peers.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	# verl's core_algos import on a CPU machine without its full dependency set
	$(VPY) -m pip install -q -r requirements-peers.txt
	$(VPY) -m pip install -q --no-deps verl==0.9.1
	touch $@

# Editable install without build isolation (isolation would fetch another torch),
# then an incremental in-place rebuild of the extension for later source changes.
build: $(DEPS)
	@test -x $(VENV)/bin/rubricrl || $(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	$(VPY) setup.py -q build_ext --inplace

# Then the learning task (all rubric items rule-checked, so the reward is exact): the
# tiny model's reward must climb; its first-10 and last-10 step means end the demo.
LEARN_DIR := runs/learning-demo
demo: build
	$(VENV)/bin/rubricrl train --config rubricrl/configs/demo.yaml
	rm -rf $(LEARN_DIR)
	$(VENV)/bin/rubricrl train --config rubricrl/configs/learning.yaml --set trainer.steps=40 --set trainer.log_every=5 --out $(LEARN_DIR)
	@$(VPY) -c 'import json, statistics as st; r = [json.loads(l)["reward_mean"] for l in open("$(LEARN_DIR)/metrics.jsonl")]; print(f"learning task: mean reward of steps 1-10 {st.fmean(r[:10]):.3f} -> steps {len(r)-9}-{len(r)} {st.fmean(r[-10:]):.3f} (exact rule-checked rubric; curve: $(LEARN_DIR)/metrics.png)")'

test: test-python test-cpp test-cuda-compile

test-python: build
	$(VPY) -m pytest -q tests

# The same csrc/ built with CMake against libtorch, and a C++ caller of the ops.
test-cpp: build
	cmake -S . -B build/cmake -G Ninja -DCMAKE_PREFIX_PATH="$$($(VPY) -c 'import torch;print(torch.utils.cmake_prefix_path)')" > /dev/null
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

# CUDA sources compile for sm_80 and sm_90 (compile only: no GPU here).
test-cuda-compile:
	@if command -v nvcc > /dev/null; then \
	  for f in csrc/cuda/*.cu; do [ -e "$$f" ] || continue; echo "nvcc $$f"; \
	    nvcc -std=c++17 -O3 -Icsrc -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
	      -c "$$f" -o /dev/null || exit 1; done; \
	else echo "nvcc not found: CUDA compile check skipped"; fi

# Each script runs its variants in fresh processes and writes bench/results/<name>.{json,md}.
bench: build
	$(VPY) -m bench.bench_logprobs
	$(VPY) bench/bench_grpo.py
	$(VPY) bench/bench_span.py
	$(VPY) -m bench.bench_grading
	$(VPY) -m bench.bench_step

clean:
	rm -rf build rubricrl/_C*.so *.egg-info
