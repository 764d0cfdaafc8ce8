# The two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Ray's temp folder must stay outside the virtualenv (workers die otherwise).
export RAY_TMPDIR ?= /tmp/raymask-ray
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install demo test test-unit lint bench faults soak scale-test load load-long clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	sh scripts/ensure-postgres.sh
	touch $(STAMP)

demo: $(STAMP)
	@mkdir -p $(RAY_TMPDIR)
	$(BIN)/raymask demo

test: $(STAMP)
	@mkdir -p $(RAY_TMPDIR)
	$(BIN)/python -m pytest -q --durations=40

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	@mkdir -p $(RAY_TMPDIR)
	$(BIN)/python -m raymask.loadtest.bench --ray
	$(BIN)/python -m raymask.loadtest.bench --kernels 1000000
	$(BIN)/python -m raymask.loadtest.format_bench --records 200000
	$(BIN)/python -m raymask.loadtest.bench --pipeline 300000
	$(BIN)/python -m raymask.loadtest.bench --kafka 200000 --repeat 2

# the long fault runs: files, 1M records, 10 worker kills; Kafka, 1M records, 16 kills of
# workers, the sink and the source; Kafka on s3 storage, 1M records, two broker restarts of 10 s
# each while workers, the sink and the source are killed every 4 s (16 kills; 6 min 18 s here);
# the budget accountant's ledger on SQLite and on PostgreSQL, 200 kill -9 each during a storm of
# reserves and commits (the short ones are part of `make test`)
faults: $(STAMP)
	@mkdir -p $(RAY_TMPDIR)
	RAYMASK_FAULT_RECORDS=1000000 RAYMASK_FAULT_KILLS=10 $(BIN)/python -m pytest -q --timeout 3600 tests/actors/test_faults.py
	RAYMASK_KAFKA_FAULT_RECORDS=1000000 RAYMASK_KAFKA_FAULT_CYCLES=4 RAYMASK_KAFKA_FAULT_GAP_S=3 \
		$(BIN)/python -m pytest -q --timeout 3600 tests/cluster/test_kafka_pipeline.py -k kills
	RAYMASK_KAFKA_RESTART_RECORDS=1000000 RAYMASK_KAFKA_RESTARTS=2 RAYMASK_KAFKA_RESTART_DOWN_S=10 \
		RAYMASK_KAFKA_RESTART_KILL_CYCLES=4 RAYMASK_KAFKA_RESTART_KILL_GAP_S=4 \
		$(BIN)/python -m pytest -q --timeout 3600 tests/cluster/test_kafka_pipeline.py -k restart
	RAYMASK_ACCOUNTANT_KILLS=200 $(BIN)/python -m pytest -q --timeout 3600 tests/actors/test_accountant.py -k kill_9

# the long overload run: 2M records (about 900 MB) through throttled workers, memory bounded
soak: $(STAMP)
	@mkdir -p $(RAY_TMPDIR)
	RAYMASK_SOAK_RECORDS=2000000 RAYMASK_SOAK_THROTTLE=0.3 $(BIN)/python -m pytest -q tests/actors/test_backpressure.py

# Locust against the embedded stack on loopback (Ray + Serve, tansu + the Kafka pipeline), about
# 2 minutes: the echo comparison, a day-shaped HTTP run and a day-shaped Kafka run, each with
# Locust's CSVs and HTML, raymask's timeline.csv and the report's PNGs in load-out/<run>/
load: $(STAMP)
	@mkdir -p $(RAY_TMPDIR)
	$(BIN)/python -m raymask.loadtest.load --out load-out $(LOAD_ARGS)

# the same, longer (about 27 minutes): three rounds of 1-minute echo and raymask runs, 10-minute
# day-shaped runs
load-long: $(STAMP)
	@mkdir -p $(RAY_TMPDIR)
	$(BIN)/python -m raymask.loadtest.load --out load-out-long --compare-seconds 60 --compare-rounds 3 \
		--seconds 600 $(LOAD_ARGS)

# the autoscaling proof: a Kafka pipeline on a local multi-node Ray cluster with the real
# autoscaler (fake provider, head on port 6379: one per machine), a spike to 5x and back;
# timeline.csv, offered.csv, summary.json and scale.png land in docs/scale/ (a short version is
# part of `make test`)
scale-test: $(STAMP)
	@mkdir -p $(RAY_TMPDIR)
	$(BIN)/python -m raymask.loadtest.scale_test --out docs/scale

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info demo-out load-out load-out-long
