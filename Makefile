# Two commands a new user needs: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= paper
OUT     ?= outputs/demo
PLAN    ?= smoke
BIN     := $(VENV)/bin
CORE    := $(VENV)/.cliper-core
STAMP   := $(VENV)/.cliper-installed

.PHONY: demo test test-paper-offline setup notebooks lab voila app bench book figure clean-outputs wheel-check

# The core package (what `cliper segment | eval | download | demo` need), with the torch build the suite is tested on.
$(CORE): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision are pinned together (torchvision imports only beside its own torch build)
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e .
	@touch $(CORE)

# Everything: the notebooks, the app and the tests, and a Jupyter kernel running this venv.
$(STAMP): $(CORE)
	$(BIN)/python -m pip install --quiet -e ".[notebooks,app,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

setup: $(STAMP)

## Segment the bundled sample photos with the full method (PROFILE=smoke: tiny random models, offline).
demo: $(CORE)
	$(BIN)/cliper demo --profile $(PROFILE) --out $(OUT)

## Lint and format checks, unit tests + every notebook executed by papermill on the smoke profile.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

## Every notebook on the paper profile, offline, against a cache of random full-size CLIP weights
## laid out like the real repositories, with no DINO model and no data set (5 minutes idle, 20 busy; CI runs it).
test-paper-offline: $(STAMP)
	$(BIN)/python -m pytest -m paper_offline tests/test_paper_profile_offline.py

## Open the notebooks.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

## The tuning notebook as an app.
voila: $(STAMP)
	$(BIN)/voila notebooks/06_interactive_layer_tuning.ipynb

## The explorer as an app (PROFILE=smoke: tiny random models, offline).
app: $(STAMP)
	$(BIN)/cliper app --profile $(PROFILE)

## The executed notebooks of a plan as a static HTML site with an index, outputs/book/$(PLAN)/index.html
## (PLAN=smoke by default; the plan runs first when its folder holds no executed copies).
book: $(STAMP)
	@ls papermill_runs/$(PLAN)/*.ipynb >/dev/null 2>&1 || $(BIN)/cliper reproduce --plan $(PLAN)
	$(BIN)/python -m cliper_lib.suite.runs.book papermill_runs/$(PLAN) --out outputs/book/$(PLAN)

## Redraw docs/pipeline.svg from the stage graph (cliper_lib/method/stages.py).
figure: $(CORE)
	$(BIN)/python -m cliper_lib.suite.toolkit.pipeline_figure

## Speed benchmarks (not tests).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py

clean-outputs:
	rm -rf outputs

## Build the wheel, install it in a fresh venv outside the checkout, run `cliper segment` and `cliper eval` there.
wheel-check:
	.ci/wheel_check.sh
