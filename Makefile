# make reproduce : build the environment, reproduce every cause in both frameworks, print the table, save plots
# make test      : build the environment, lint (ruff), run the package tests, every notebook (nbval) and the contract
#                  (3 seeds), on TEST_WORKERS pytest-xdist workers (default 2, one a core on CI's 2 cores)
# make test-quick: lint and the quick tier, pytest -m "not slow": the package tests without the notebooks, the
#                  contract, the browser and the distributed tests, on the same workers (1 min 54 s measured on 2 cores)
# make lab       : open JupyterLab on the start-here notebook, serving notebooks/ (as root too, e.g. in a
#                  container)
# make student   : the handout: build/student/ and build/nanlab-student.zip (notebooks without solutions, the files
#                  they read, a wheel of nanlab, requirements.txt, README.md)
# make assignment: nbgrader's release in build/course/release and the answer key in build/answer-key
# make autograde SUBMISSIONS=DIR : grade DIR/<student>/… with nbgrader, print the scores (build/course/scores.csv)
# make slides    : reveal.js slide decks of the notebooks in build/slides for a projector (open offline; code
#                  hidden, SHOW_CODE=1 shows it)
# make site      : a static site of every executed notebook in build/site (open build/site/index.html)
# make doctor    : check this machine (versions, devices, CUDA, the notebooks' kernel), then run the one-minute
#                  end-to-end check (nanlab doctor --smoke)
# make wheelhouse: every wheel a lab installs, downloaded once into build/wheelhouse for offline installs
#                  (the extras make env installs; WHEELHOUSE_EXTRAS=torch,dev for less; docs/teaching.md)
# make gpu-check  : on a CUDA machine, ~10 min: the catalogue on the GPU (1 seed), the watch's CUDA tests and the
#                  torch benchmarks, written to docs/reproduction-cuda.md (on a CPU machine: one line, exit 0)
# make reproduce DEVICE=cuda : reproduce on the GPU (default: auto, the GPU when there is one)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEVICE ?= auto
NOTEBOOKS = notebooks/00-start-here.ipynb $(sort $(wildcard notebooks/pytorch/*.ipynb)) \
	$(sort $(wildcard notebooks/tensorflow/*.ipynb))
# Jupyter refuses to start as root ("Running as root is not recommended") unless told to
LAB_FLAGS = $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: gpu-check env reproduce test test-quick lab notebooks student assignment autograde slides site doctor

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[torch,tensorflow,integrations,dev]" 2>&1 \
		| grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import nanlab.frameworks.torch.loop, nanlab.frameworks.tensorflow.loop, nbval, papermill"
	touch $@

reproduce: env
	$(BIN)/nanlab verify --seeds 1 --device $(DEVICE) --plots results/plots --json results/reproduce.json

# --dist loadfile: whole files to a worker (module fixtures run once, a notebook's cells in one kernel), with the
# exceptions tests/conftest.py gives (the launches of two ranks one after another, the contract a test at a time)
TEST_WORKERS ?= 2
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadfile

test: env
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-quick: env
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

# JupyterLab serves notebooks/: links between notebooks are relative to their own folder and stay inside it
# (tests/test_links.py)
lab: env
	$(BIN)/jupyter lab $(LAB_FLAGS) --ServerApp.root_dir=notebooks notebooks/00-start-here.ipynb

notebooks: env
	$(BIN)/python -m tools.execute_notebooks notebooks/00-start-here.ipynb notebooks/glossary.ipynb notebooks/pytorch/*.ipynb \
		notebooks/tensorflow/*.ipynb

# student, assignment, autograde: every notebook under notebooks/ (the glossary included), graded with nbgrader
student: env
	$(BIN)/python -m tools.student_copies --out build/student --zip build/nanlab-student.zip

assignment: env
	$(BIN)/python -m tools.assignment release --course build/course --answer-key build/answer-key

SUBMISSIONS ?= submissions
autograde: env
	$(BIN)/python -m tools.assignment autograde --course build/course $(SUBMISSIONS)

# slides and site: every notebook under notebooks/, the glossary included
ALL_NOTEBOOKS = $(sort $(wildcard notebooks/*.ipynb notebooks/*/*.ipynb))
slides: env
	$(BIN)/python -m tools.build_slides --out build/slides $(if $(SHOW_CODE),--show-code) $(ALL_NOTEBOOKS)

site: env
	$(BIN)/python -m tools.build_site --out build/site $(ALL_NOTEBOOKS)

doctor: env
	$(BIN)/nanlab doctor
	$(BIN)/nanlab doctor --smoke

.PHONY: wheelhouse
WHEELHOUSE_EXTRAS ?= torch,tensorflow,integrations,dev
wheelhouse: env
	$(BIN)/python -m tools.wheelhouse --out build/wheelhouse --extras $(WHEELHOUSE_EXTRAS)

gpu-check: env
	$(BIN)/python -m tools.gpu_check
