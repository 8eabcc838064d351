# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Three workers on two cores: the tests wait on HTTP and on Airflow's processes as much as they compute
# (whole suite 7:08 with 3, 12:18 with 2).
PYTEST_WORKERS ?= 3

.PHONY: install services demo test lint airflow airflow-celery emulate bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[emulators,celery,test,lint]"
	@touch $(STAMP)

install: $(STAMP)

# redis-server and PostgreSQL for airflow-celery and its end-to-end test: apt-get installs them when missing.
services:
	.ci/install-services

demo: $(STAMP)
	$(VENV)/bin/didomi-dynamics demo

test: $(STAMP) services
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy airflow_provider_didomi_dynamics

# airflow standalone wired to the emulators (demo data): UI on http://localhost:8080 (AIRFLOW__API__PORT=...), Ctrl-C stops
# everything. See docs/airflow-ui.md. Needs the [emulators] extra, which `install` brings.
airflow: $(STAMP)
	$(VENV)/bin/didomi-dynamics airflow

# A distributed Airflow on this machine: scheduler, api-server, dag-processor and two Celery workers, with a Redis
# broker and PostgreSQL as the metadata database, all wired to the emulators (demo data). UI on http://localhost:8080.
airflow-celery: $(STAMP) services
	$(VENV)/bin/didomi-dynamics airflow-celery

emulate: $(STAMP)
	$(VENV)/bin/didomi-dynamics emulate --seed demo

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .emulators .demo .airflow-local .airflow-celery build *.egg-info
