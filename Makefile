# Every target creates the virtual environment when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench bench-live lint samples dataset model eval clean

RS := $(BIN)/radsensor
MODEL := models/demo.rsm
BASELINE := pcaps/normal-day1.pcap pcaps/normal-day2.pcap

$(STAMP): pyproject.toml setup.py sensor/_fast/fastpath.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the shipped samples: decode, (re)use the baseline, detect the attack day,
# print the alerts and the evaluation table.
demo: $(STAMP)
	@# Reuse the shipped model when this installation can load it (same feature set and versions),
	@# otherwise rebuild it from the baseline samples.
	$(RS) model info $(MODEL) >/dev/null 2>&1 || $(RS) train $(BASELINE) -o $(MODEL) --no-progress
	$(RS) decode pcaps/attack-day.pcap --logs out/demo/logs --no-progress
	$(RS) model info $(MODEL)
	$(RS) detect pcaps/attack-day.pcap -m $(MODEL) --alerts out/demo/alerts.jsonl --format text
	$(RS) evaluate --labels pcaps/attack-day.labels.json out/demo/alerts.jsonl --model $(MODEL)

model: $(STAMP)
	$(RS) train $(BASELINE) -o $(MODEL) --no-progress

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-live: $(STAMP)
	$(BIN)/python -m bench.live

lint: $(STAMP)
	$(BIN)/ruff check sensor training tests bench

samples: $(STAMP)
	$(BIN)/python -m training.generate --samples --out pcaps

dataset: $(STAMP)
	$(BIN)/python -m training.generate --full --out data/dataset

# Full evaluation: 7 normal, 3 attack (different seeds), 2 clean days at full study, query and
# message volume; image bytes are scaled down (0.005) because detection looks at behaviour, not
# pixel bytes, and it keeps the set at a few GB. Trains on the normal days, detects every attack
# and clean day with the DICOM/HL7-aware model and with the flow-only comparison forest.
EVAL_DATA := data/dataset-eval
eval: $(STAMP)
	test -f $(EVAL_DATA)/.complete || ($(BIN)/python -m training.generate --full --image-scale 0.005 \
	    --out $(EVAL_DATA) && touch $(EVAL_DATA)/.complete)
	$(BIN)/python -m training.run_eval $(EVAL_DATA) out/eval

clean:
	rm -rf $(VENV) out build *.egg-info
