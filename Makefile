# The two commands a new user needs (each installs what is missing first):
#   make demo   run the embedded audio-visual recipe end to end (egs2/avgrid/avsr1)
#   make test   run the test suite
PYTHON := tools/venv/bin/python
# Tests use one thread each; the demo uses every core (path.sh defaults to 2 when unset).
TEST_THREADS ?= 1
DEMO_THREADS ?= $(shell nproc)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test demo

install:
	bash tools/install.sh

test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(TEST_THREADS)} $(PYTHON) -m pytest -q -p no:cacheprovider tests

demo: install
	cd egs2/avgrid/avsr1 && OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(DEMO_THREADS)} ./run.sh
