# aded-edge: `make demo` runs the default model, `make test` runs the test suite.
# BACKEND=cpu|metal|cuda selects how llama.cpp is compiled (see native/build.sh).
PYTHON  ?= python3
VENV    ?= .venv
BACKEND ?= cpu
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(BACKEND)
DEFAULT_MODEL := smollm2-135m-instruct

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml native/build.sh native/flags.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet numpy numba click
	bash native/build.sh $(VENV) $(BACKEND)
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(BIN)/aded-edge models pull $(DEFAULT_MODEL)
	$(BIN)/aded-edge run $(DEFAULT_MODEL) --chat -n 192 \
	  -p "Write a Python function that checks whether a string is a palindrome, with a docstring and two examples."

test: install
	$(BIN)/aded-edge models pull $(DEFAULT_MODEL)
	$(BIN)/python -m pytest -q

# the default model's corpus matrix (ShareGPT + Python stdlib, ~2 minutes once), then the bench;
# llama.cpp's own tools join the comparison after `make peers`
bench: install
	$(BIN)/pip install --quiet matplotlib
	$(BIN)/aded-edge models pull $(DEFAULT_MODEL)
	$(BIN)/aded-edge matrix build -m $(DEFAULT_MODEL) --corpus sharegpt --corpus python-stdlib --if-missing
	$(BIN)/aded-edge bench -m $(DEFAULT_MODEL)

clean:
	rm -rf $(VENV) native/build

# `make peers`: llama.cpp's own llama-lookup, llama-speculative(-simple) and llama-completion,
# built from the same vendored llama.cpp and CPU flags into native/build/peers/bin (native/peers.sh).
.PHONY: peers
peers:
	bash native/peers.sh native/build/peers $(BACKEND)
