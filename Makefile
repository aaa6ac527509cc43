# The two commands a new user needs (each installs what is missing first):
#   make demo   run the embedded audio-visual recipe end to end (egs2/avgrid/avsr1)
#   make test   run the test suite
PYTHON := tools/venv/bin/python
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test demo

install:
	bash tools/install.sh

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

demo: install
	cd egs2/avgrid/avsr1 && ./run.sh
