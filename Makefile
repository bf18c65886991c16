# mll_tf set-up and main job. Both entry points are idempotent:
#   make demo   install everything, extract clip-art features, train LESA, evaluate ZSL/GZSL
#   make test   install everything, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := openclipart-svg dataset-fashion-mnist libcairo2
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FEATURES ?= data/features
RUN    ?= runs/lesa_openclipart
EPOCHS ?= 8

.PHONY: demo test install apt venv extract train evaluate benchmarks clean

install: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "apt: $(APT_PACKAGES) already installed"; fi

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

extract: install
	$(PY) extract/build_tfrecords.py --dataset openclipart --backbone efficientnet_lite0 --out-dir $(FEATURES)

train: extract
	$(PY) experiments/train.py --method lesa --dataset openclipart --features-root $(FEATURES) \
	  --run-dir $(RUN) --epochs $(EPOCHS) --resume

evaluate: train
	$(PY) evaluation/evaluate.py --run $(RUN) --baselines

demo: evaluate

test: install
	$(PY) -m pytest -q -ra

benchmarks: install
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_tfrecord.py
	$(PY) benchmarks/bench_lesa.py
	$(PY) benchmarks/bench_extraction.py

clean:
	rm -rf $(RUN) $(FEATURES)
