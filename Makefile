# The two commands of the README: `make demo` and `make test`. Each creates
# the virtual environment it needs in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BUF := tools/buf/node_modules/.bin/buf
NODE_CLIENT := examples/clients/node

.PHONY: demo test lint proto contract-release node-tools clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	@# gRPC's C core logs to the terminal on its own: errors only, as the hub's log here. (Its info line at step 17 is
	@# the peering's first call, refused by TLS until the other hub has registered this one: expected.)
	GRPC_VERBOSITY=ERROR $(BIN)/exchange demo

test: $(STAMP) node-tools
	@# promtool (Debian package prometheus) checks the metrics exposition; CI installs it, elsewhere its test is skipped.
	@if [ "$$CI" = "true" ] && ! command -v promtool >/dev/null 2>&1; then \
		apt-get install -y -q prometheus >/dev/null 2>&1 || echo "promtool could not be installed: its test will be skipped"; fi
	@# The console's pages are tested in Debian's Chromium, with a CJK font (else Chinese renders as empty boxes).
	@if [ "$$CI" = "true" ] && { ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi wenquanyi; }; then \
		apt-get install -y -q chromium fonts-wqy-microhei >/dev/null 2>&1 || echo "chromium could not be installed: the browser tests will fail"; fi
	$(BIN)/python scripts/gen_proto.py --check
	@# buf (npm package @bufbuild/buf, pinned in tools/buf) lints proto/ and checks it against the last release.
	@if [ -x $(BUF) ]; then $(BIN)/python scripts/contract.py check; \
	elif [ "$$CI" = "true" ]; then echo "buf is not installed (npm ci --prefix tools/buf failed?): CI checks the contract"; exit 1; \
	else echo "buf is not installed (no npm): the contract's lint and breaking-change checks are skipped"; fi
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

# At a release: the baseline later contracts are checked against (proto/releases/), for pyproject's version.
contract-release: $(STAMP) node-tools
	$(BIN)/python scripts/contract.py cut

# The npm packages of the contract's checks (buf) and of the Node.js client example, each from its lock file,
# reinstalled only when the lock file changes. Without npm they are skipped, and so are their checks and tests.
node-tools:
	@for dir in tools/buf $(NODE_CLIENT); do \
		if [ -f $$dir/node_modules/.installed ] && [ ! $$dir/package-lock.json -nt $$dir/node_modules/.installed ]; then continue; fi; \
		if ! command -v npm >/dev/null 2>&1; then echo "npm not found: $$dir is not installed"; continue; fi; \
		npm ci --prefix $$dir --no-audit --no-fund --loglevel=error >/dev/null && touch $$dir/node_modules/.installed \
			|| echo "npm ci in $$dir failed"; \
	done

clean:
	rm -rf $(VENV) var build *.egg-info tools/buf/node_modules $(NODE_CLIENT)/node_modules
