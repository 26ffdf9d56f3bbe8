# robofm: `make demo` converts the embedded demo dataset and pretrains on it, `make test` the whole test suite.
# Both create .venv (Python 3.12) and install robofm into it (with the dev and sim extras) when needed, and then
# check that MuJoCo can render off screen (`make gl`).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEMO_SRC := datasets/metaworld_mt10
DEMO_OUT := outputs/demo
DEMO_EVAL := horizons=1,4 batches=25 batch_size=4 sampler_steps=10 verdict_sampler_steps=1# 100 held-out windows
GL_PACKAGE := libosmesa6
CORPUS_OUT := outputs/corpus
CORPUS_EPISODES := 24# per task: 45 x 24 = 1,080 episodes
CORPUS_MIX := expert=0.4,dart=0.3,explore=0.3
CORPUS_CAMERAS := corner2# one camera (LeRobot's MetaWorld view): 0.67x the collector's time of two (RESULTS.md)
HELD_OUT_EPISODES := 10# per held-out task, for scoring only
PRETRAIN_EVAL := horizons=1,4 batches=50 batch_size=4 sampler_steps=10 verdict_sampler_steps=1

# python3.12 from PATH, else a pyenv-installed 3.12 (whose shim only answers when 3.12 is selected)
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	  $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)

.PHONY: demo corpus pretrain test gl bench lint clean

$(VENV)/.installed: pyproject.toml plugins/lerobot_policy_robofm/pyproject.toml
	@test -n "$(PYTHON312)" || { echo "Python 3.12 not found: install it and make python3.12 runnable"; exit 1; }
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); test -x $(PY) || test "$$free" -ge 7 || \
	  { echo "The environment needs about 7 GB of disk (PyTorch's CUDA build and its libraries); $$free GB free here"; exit 1; }
	test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,sim]"
	$(PY) -m pip install -q -e plugins/lerobot_policy_robofm  # robofm as a LeRobot policy (lerobot-eval --policy.path)
	@$(MAKE) --no-print-directory gl
	touch $@

# MuJoCo (the sim extra) renders off screen through OSMesa or EGL; robofm/sim/gl.py finds which works (on a CPU
# machine Mesa's EGL usually does). Where neither does: as root with apt-get, install OSMesa (libosmesa6); otherwise
# say how. Never fails the build: without a backend the tests that render are skipped, naming the package.
# (robofm.sim.gl exits 1 when no backend renders, 2 when MuJoCo itself is missing: nothing to install here then.)
gl:
	@test -x $(PY) || { echo "no $(PY) yet: run make test or make demo"; exit 1; }
	@rc=0; env -u MUJOCO_GL -u PYOPENGL_PLATFORM $(PY) -m robofm.sim.gl >/dev/null 2>&1 || rc=$$?; \
	if [ $$rc != 1 ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "MuJoCo cannot render off screen (neither OSMesa nor EGL works): apt-get install -y $(GL_PACKAGE)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q $(GL_PACKAGE) >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(GL_PACKAGE) >/dev/null 2>&1; } || \
	    echo "apt-get could not install $(GL_PACKAGE): the tests that render will be skipped"; \
	else \
	  echo "MuJoCo cannot render off screen (neither OSMesa nor EGL works), so the tests that render will be" \
	    "skipped; to run them: sudo apt-get install -y $(GL_PACKAGE) (Debian/Ubuntu)"; \
	fi

# Convert the demo dataset (once), pretrain the tiny model on it on the CPU, evaluate it on the held-out episodes
# against the baselines (the frame bars judged at 1 sampler step, the posterior mean that PSNR rewards), and write
# the HTML report of an imagined rollout. An interrupted `make demo` continues
# from its latest checkpoint (resume=auto).
demo: $(VENV)/.installed
	test -f $(DEMO_OUT)/store/manifest.json || \
	  $(VENV)/bin/robofm-convert lerobot $(DEMO_SRC) --out $(DEMO_OUT)/store --overwrite --workers 2 --license mit
	$(VENV)/bin/robofm-train experiment=demo data.path=$(DEMO_OUT)/store hydra.run.dir=$(DEMO_OUT)/run resume=auto
	$(VENV)/bin/robofm-eval checkpoint=$(DEMO_OUT)/run data.path=$(DEMO_OUT)/store out=$(DEMO_OUT)/eval.json $(DEMO_EVAL)
	$(VENV)/bin/robofm-viz checkpoint=$(DEMO_OUT)/run data.path=$(DEMO_OUT)/store eval=$(DEMO_OUT)/eval.json \
	  out=$(DEMO_OUT)/report
	@echo "demo: model $(DEMO_OUT)/run/export, held-out metrics $(DEMO_OUT)/eval.json, report $(DEMO_OUT)/report/report.html"

# The pretraining corpus: ML45's 45 train tasks (never its 5 test tasks), each with scripted-expert, DART and
# exploring episodes, recorded by 2 worker processes as LeRobot v3 into $(CORPUS_OUT)/lerobot and converted into the
# store $(CORPUS_OUT)/store; and, for scoring only, episodes of the 5 held-out tasks ($(CORPUS_OUT)/held_out_tasks).
# Deterministic for the collector's --seed (0). A finished collection (meta/collect.json) or conversion
# (manifest.json) is reused; an interrupted collection starts that dataset again.
corpus: $(VENV)/.installed
	test -f $(CORPUS_OUT)/lerobot/meta/collect.json || $(PY) scripts/collect_metaworld.py --out $(CORPUS_OUT)/lerobot \
	  --repo-id robofm/metaworld_ml45_corpus --tasks ml45 --episodes-per-task $(CORPUS_EPISODES) --mix $(CORPUS_MIX) \
	  --cameras $(CORPUS_CAMERAS) --workers 2 --overwrite
	test -f $(CORPUS_OUT)/store/manifest.json || \
	  $(VENV)/bin/robofm-convert lerobot $(CORPUS_OUT)/lerobot --out $(CORPUS_OUT)/store --overwrite --workers 2 --license mit
	test -f $(CORPUS_OUT)/held_out_tasks/lerobot/meta/collect.json || $(PY) scripts/collect_metaworld.py \
	  --out $(CORPUS_OUT)/held_out_tasks/lerobot --repo-id robofm/metaworld_ml45_held_out_tasks --tasks ml45-test \
	  --allow-held-out --episodes-per-task $(HELD_OUT_EPISODES) --mix $(CORPUS_MIX) --cameras $(CORPUS_CAMERAS) \
	  --workers 2 --overwrite
	test -f $(CORPUS_OUT)/held_out_tasks/store/manifest.json || $(VENV)/bin/robofm-convert lerobot \
	  $(CORPUS_OUT)/held_out_tasks/lerobot --out $(CORPUS_OUT)/held_out_tasks/store --overwrite --workers 2 --license mit \
	  --val-fraction 1
	@echo "corpus: $(CORPUS_OUT)/store (ML45 train tasks), $(CORPUS_OUT)/held_out_tasks/store (ML45 test tasks)"

# The corpus-scale base: robofm-train experiment=pretrain on the corpus (sized by robofm-plan for 60 minutes of
# 2 cores), scored by robofm-eval on the held-out episodes of the corpus tasks and on the held-out tasks' episodes,
# which it never saw. An interrupted `make pretrain` continues from its latest checkpoint (resume=auto).
pretrain: corpus
	$(VENV)/bin/robofm-train experiment=pretrain data.path=$(CORPUS_OUT)/store hydra.run.dir=$(CORPUS_OUT)/run resume=auto
	$(VENV)/bin/robofm-eval checkpoint=$(CORPUS_OUT)/run data.path=$(CORPUS_OUT)/store \
	  out=$(CORPUS_OUT)/eval_held_out_episodes.json $(PRETRAIN_EVAL)
	$(VENV)/bin/robofm-eval checkpoint=$(CORPUS_OUT)/run data.path=$(CORPUS_OUT)/held_out_tasks/store \
	  out=$(CORPUS_OUT)/eval_held_out_tasks.json $(PRETRAIN_EVAL)
	@echo "pretrain: base $(CORPUS_OUT)/run/export, held-out metrics $(CORPUS_OUT)/eval_held_out_{episodes,tasks}.json"

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/loader.py

# ruff, and the layers of robofm (pyproject.toml's import-linter contract: no module imports from a layer above it)
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check robofm tests benchmarks scripts plugins examples
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) outputs .pytest_cache
