# The two README commands: `make demo` (main job) and `make test` (test suite).
# Both set the machine up first; setup is idempotent (a stamp file records a finished install).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.lamflow-setup
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test

setup: $(STAMP)

# Debian packages: ffmpeg (decoding), a Java runtime (pycocoevalcap's PTB tokenizer and METEOR: lamflow eval
# captioning), slurm-wlm + munge (the test suite runs a one-node SLURM, tests/test_slurm.py), strace (tests/test_durability.py
# checks the order of fsyncs and renames).
$(STAMP): requirements/cpu.txt requirements/cluster.txt setup.py
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	command -v java >/dev/null 2>&1 || missing="$$missing default-jre-headless"; \
	command -v slurmctld >/dev/null 2>&1 || missing="$$missing slurm-wlm"; \
	command -v munged >/dev/null 2>&1 || missing="$$missing munge"; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	if [ -n "$$missing" ]; then \
	  echo "== installing Debian$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; fi
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements/cluster.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	@touch $@

demo: setup
	$(VENV)/bin/lamflow demo $(DEMO_ARGS)

# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
test: setup
	@$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc
