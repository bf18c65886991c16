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

.PHONY: demo test install apt venv extract train evaluate benchmarks partial-labels imcl-table clean

install: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  $(SUDO) apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing; \
	else echo "apt: $(APT_PACKAGES) already installed"; fi

$(VENV)/.installed: requirements.txt pyproject.toml
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

# README demo table: the train + evaluate commands above REPEAT times in fresh run folders (seeds 0..REPEAT-1),
# mean (min-max) of every number; DEMO_REPEAT_ARGS adds train.py flags, e.g. "--selection zsl_holdout"
REPEAT ?= 5
DEMO_REPEAT_ARGS ?=
.PHONY: demo-repeat
demo-repeat: extract
	$(PY) benchmarks/demo_repeat.py --n $(REPEAT) --features-root $(FEATURES) --epochs $(EPOCHS) \
	  --runs-root runs/demo_repeat --train-args="$(DEMO_REPEAT_ARGS)"

test: install
	$(PY) -m pytest -q -ra --durations=10 -n 2 --dist loadfile -p no:unraisableexception

benchmarks: install
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_tfrecord.py
	$(PY) benchmarks/bench_lesa.py
	$(PY) benchmarks/bench_extraction.py
	$(PY) benchmarks/bench_imcl.py
	$(PY) benchmarks/bench_trainer.py
	$(PY) benchmarks/bench_scale.py

extract-fmnist: install
	$(PY) extract/build_tfrecords.py --dataset fashion_mnist_grid --backbone efficientnet_lite0 --out-dir $(FEATURES)

# README table: Ignore / Negative / ASL / CSL under FPC and RPS, 3 seeds (issue 4)
partial-labels: extract-fmnist
	$(PY) benchmarks/partial_labels.py --features-root $(FEATURES)

# README table: logistic vs IMCL on fashion_mnist_grid and the clip-art tags, 3 seeds (issue 5)
IMCL_TABLE_ARGS ?=
imcl-table: extract-fmnist extract
	$(PY) benchmarks/imcl_vs_logistic.py --features-root $(FEATURES) $(IMCL_TABLE_ARGS)

# README table: plain CAM classifier / Puzzle-CAM / OASS (Max, cMax, cTopk, cTopk-w) fine-tuning EfficientNet-Lite0
# on scattered Fashion-MNIST, test mAP and keypoint localisation accuracy
OASS_SEEDS ?= 0 1 2
OASS_EPOCHS ?= 2
.PHONY: oass-table
oass-table: install
	$(PY) benchmarks/oass_table.py --seeds $(OASS_SEEDS) --epochs $(OASS_EPOCHS)

# heads {linear, ML-GCN, ML-Decoder} x losses {ASL, AAM}, 3 seeds, on the stored fashion_mnist_grid and
# clip-art features (docs/ml_heads.md); prints mean (min-max) test mAP / CF1 / OF1
.PHONY: ml-heads-table
ml-heads-table: extract-fmnist extract
	$(PY) benchmarks/ml_heads_table.py --features-root $(FEATURES) --seeds 0,1,2 --out runs/ml_heads_table

clean:
	rm -rf $(RUN) $(FEATURES)
