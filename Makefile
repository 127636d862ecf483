# make reproduce : build the environment, reproduce every cause in both frameworks, print the table, save plots
# make test      : build the environment, run the package tests, every notebook (nbval) and the contract (3 seeds)
# make lab       : open JupyterLab on the start-here notebook
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: env reproduce test lab notebooks

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[torch,tensorflow,dev]" 2>&1 \
		| grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import nanlab.frameworks.torch.loop, nanlab.frameworks.tensorflow.loop, nbval, papermill"
	touch $@

reproduce: env
	$(BIN)/nanlab verify --seeds 1 --plots results/plots --json results/reproduce.json

test: env
	$(BIN)/python -m pytest

lab: env
	$(BIN)/jupyter lab notebooks/00-start-here.ipynb

notebooks: env
	$(BIN)/python tools/execute_notebooks.py notebooks/00-start-here.ipynb notebooks/pytorch/*.ipynb notebooks/tensorflow/*.ipynb
