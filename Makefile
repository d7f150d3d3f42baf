# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each creates .venv/ if missing).
PY := .venv/bin/python
UV := python3 -m uv
export WANDB_MODE ?= offline
export HYDRA_FULL_ERROR ?= 1

.PHONY: venv demo test test-unit test-slow bench clean-cache

# uv resolves only from the public registry (see [tool.uv] in pyproject.toml): never the CPU torch file that
# some machines pre-place, which breaks torchvision. `pip --isolated` keeps pip's local wheel dirs out too.
.venv/.installed: pyproject.toml uv.lock
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --isolated --quiet uv
	$(UV) sync --frozen --compile-bytecode
	@touch $@

venv: .venv/.installed

demo: venv
	$(PY) train.py experiment=quickstart

test: venv
	.venv/bin/ruff check .
	$(PY) -m pytest -q

test-unit: venv
	$(PY) -m pytest -q -m "not slow and not e2e"

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	-$(PY) benchmarks/rmac_pooling.py
	-$(PY) benchmarks/extraction_overhead.py
	-$(PY) benchmarks/search_scale.py
	-$(PY) benchmarks/regional_attention_speed.py
	-$(PY) benchmarks/aml_speed.py --queries 2
	-$(PY) benchmarks/local_similarity_speed.py
	-$(PY) benchmarks/d2r_speed.py
	-$(PY) benchmarks/scale.py --n 200000
	-bash benchmarks/gpu_check.sh

clean-cache:
	rm -rf .cache/descriptors
