# Every target first creates/refreshes .venv (scripts/bootstrap.sh) with the core and all plugins.
.PHONY: venv demo test lint docs clean chem-model

venv:
	@bash scripts/bootstrap.sh

## Train examples/dw4.yaml from scratch on CPU (~3 min on 2 cores), then print a verdict (untrained
## vs trained vs the dw4_val reference that ships with adjoint-core-particles) and the plot paths.
demo: venv
	rm -rf runs/dw4-demo
	.venv/bin/adjoint-core train examples/dw4.yaml --out runs/dw4-demo
	@echo "For scale: the Adjoint Sampling paper reports energy W2 0.55 and geometric W2 0.62 on DW-4"
	@echo "after 5,000 epochs of an EGNN 128x5 (this demo: 30 epochs of a 64x3);"
	@echo "examples/dw4_cpu_reweight_sde400.yaml reaches 0.47 / 0.43 in ~30 min on one CPU thread."

## Run the whole test suite (core + every plugin) and ruff.
test: venv
	.venv/bin/ruff check .
	OMP_NUM_THREADS=1 .venv/bin/python -m pytest -n 2 -q

## Build the HTML docs into docs/_build/html (fresh build; warnings are errors).
docs: venv
	OMP_NUM_THREADS=1 .venv/bin/python -m sphinx -W --keep-going -E -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

## Retrain the conformer model that ships with adjoint-core-chem on one CPU thread (~64 min;
## examples/chem_spice_cpu.yaml) and export it to models/spice_egnn (copy that folder over
## adjoint_core_chem/data/models/spice_egnn to ship it).
chem-model: venv
	OMP_NUM_THREADS=1 .venv/bin/adjoint-core train examples/chem_spice_cpu.yaml --out runs/chem_spice_cpu
	.venv/bin/adjoint-core chem-export runs/chem_spice_cpu --out models/spice_egnn

lint: venv
	.venv/bin/ruff check .

clean:
	rm -rf runs/dw4-demo .pytest_cache .ruff_cache
