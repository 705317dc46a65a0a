# The two commands of the README: `make demo` and `make test`. Both set up a local virtualenv from
# scratch (Rust and Python 3.11 with pip are all a fresh machine needs) and build the extension.

VENV    := .venv
PY      := $(VENV)/bin/python
DEPS    := $(VENV)/.deps-installed
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: demo test build lint cargo-test package browser pytest bench clean

# The seed tutorial twice: on the default threads, then on its Client(n_workers=4, threads_per_worker=4).
demo: build
	$(PY) examples/tutorial.py
	$(PY) examples/tutorial.py --client

test: lint cargo-test package browser pytest

$(PY):
	python3 -m venv $(VENV)

$(DEPS): requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The dashboard's browser test drives Debian's Chromium; install it when missing and we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "Chromium is not installed and cannot be (not root): the browser test will be skipped"

build: $(DEPS)
	$(VENV)/bin/maturin develop --release --quiet

lint: $(DEPS)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	$(VENV)/bin/ruff check python tests examples benchmarks
	$(VENV)/bin/ruff format --check python tests examples benchmarks

cargo-test:
	cargo test --workspace --quiet

# The crates a Rust user depends on stay publishable: packaged, and built from the package as crates.io
# would build them (the unpublished path dependencies through cargo's temporary local registry).
package:
	cargo package --quiet --allow-dirty -p belated-core -p belated-render -p belated

pytest: build
	$(PY) -m pytest

bench: build
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) target
