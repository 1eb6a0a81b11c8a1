# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0 is served from a local CPU wheel on these machines; pinning it first keeps pip from
# pulling gigabytes of CUDA wheels. On a GPU machine install your CUDA torch instead (see README).
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo-out

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[cpu,dev,tensorrt-rtx,serve]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/vvtrt demo -w $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_DIR)
