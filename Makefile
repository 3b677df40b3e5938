# Every target first creates/refreshes .venv (scripts/bootstrap.sh) with the core and all plugins.
.PHONY: venv demo test lint docs clean

venv:
	@bash scripts/bootstrap.sh

## Train examples/dw4.yaml end to end on CPU and print its metrics against dw4_val.npy.
demo: venv
	.venv/bin/adjoint-core train examples/dw4.yaml --out runs/dw4-demo

## Run the whole test suite (core + every plugin) and ruff.
test: venv
	.venv/bin/ruff check .
	OMP_NUM_THREADS=1 .venv/bin/python -m pytest -n 2 -q

## Build the HTML docs into docs/_build/html (fresh build; warnings are errors).
docs: venv
	OMP_NUM_THREADS=1 .venv/bin/python -m sphinx -W --keep-going -E -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

lint: venv
	.venv/bin/ruff check .

clean:
	rm -rf runs/dw4-demo .pytest_cache .ruff_cache
