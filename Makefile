# The two commands of the README: `make demo` and `make test`. Each creates
# the virtual environment it needs in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint proto clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/exchange demo

test: $(STAMP)
	@# promtool (Debian package prometheus) checks the metrics exposition; CI installs it, elsewhere its test is skipped.
	@if [ "$$CI" = "true" ] && ! command -v promtool >/dev/null 2>&1; then \
		apt-get install -y -q prometheus >/dev/null 2>&1 || echo "promtool could not be installed: its test will be skipped"; fi
	@# The console's pages are tested in Debian's Chromium, with a CJK font (else Chinese renders as empty boxes).
	@if [ "$$CI" = "true" ] && { ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi wenquanyi; }; then \
		apt-get install -y -q chromium fonts-wqy-microhei >/dev/null 2>&1 || echo "chromium could not be installed: the browser tests will fail"; fi
	$(BIN)/python scripts/gen_proto.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) var build *.egg-info
