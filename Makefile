# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch CI verified. tools/install_torch.py keeps a torch that satisfies it, installs the CPU build from
# PyTorch's CPU index on a Linux machine without an NVIDIA GPU (no multi-GB CUDA wheels), falling back to the
# default package index in seconds when that index is unreachable; with a GPU, the default index's build.
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_DIR ?= demo-out

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml tools/install_torch.py
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python tools/install_torch.py "$(TORCH_SPEC)" --cpu-index "$(TORCH_CPU_INDEX)"
	$(BIN)/python -m pip install -q -e ".[cpu,dev,tensorrt-rtx,serve,ray]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/vvtrt demo -w $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_DIR)
