# The two commands of the README: `make demo` and `make test`. Both set up a local virtualenv from
# scratch (Rust and Python 3.11 with pip are all a fresh machine needs) and build the extension.

VENV    := .venv
PY      := $(VENV)/bin/python
DEPS    := $(VENV)/.deps-installed
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: demo test build wheel docs docs-check lint cargo-test package browser pytest bench clean

# The seed tutorial twice: on the default threads, then on its Client(n_workers=4, threads_per_worker=4).
demo: build
	$(PY) examples/tutorial.py
	$(PY) examples/tutorial.py --client

test: lint cargo-test package browser pytest docs-check

$(PY):
	python3 -m venv $(VENV)

# The dev dependency group of pyproject.toml (PEP 735; pip installs groups from 25.1 on).
$(DEPS): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --group dev
	touch $@

# The dashboard's browser test drives Debian's Chromium; install it when missing and we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "Chromium is not installed and cannot be (not root): the browser test will be skipped"

# The extension is abi3 (`_belated.abi3.so`); Python would import a version-specific one left by an
# older build (`_belated.cpython-311-….so`) before it, so that goes first. The package's bytecode is
# written last, as pip writes an installed wheel's: under PYTHONDONTWRITEBYTECODE (set on CI machines)
# Python reads it but never writes it, and each worker process would compile `_worker.py` again as it
# starts (a third of its start), each `import belated` the whole package.
build: $(DEPS)
	rm -f python/belated/_belated.cpython-*.so
	$(VENV)/bin/maturin develop --release --quiet
	$(PY) -m compileall -q python/belated

# The wheel users install: one abi3 wheel for CPython >= 3.10, linked by zig (the ziglang package,
# found by maturin as `python3 -m ziglang` on PATH) against glibc 2.17, i.e. manylinux2014; stripped.
# The sdist goes beside it. tests/test_wheel.py installs the wheel into fresh venvs.
WHEELS := target/wheels
wheel: $(DEPS)
	rm -f $(WHEELS)/belated-*
	PATH="$(VIRTUAL_ENV)/bin:$$PATH" $(VENV)/bin/maturin build --release --quiet --zig \
		--compatibility manylinux2014 --strip --out $(WHEELS)
	$(VENV)/bin/maturin sdist --out $(WHEELS) >/dev/null
	@ls -l $(WHEELS)/belated-* | awk '{ printf "%s: %.2f MB\n", $$NF, $$5 / 1e6 }'

# The docs site (mkdocs Material; the API reference comes from the docstrings) into target/site.
# The API reference imports the built package.
DOCS_BUILD := NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --quiet --site-dir target/site
docs: build
	$(DOCS_BUILD)

# The same build, failing on any warning (a broken link, a docstring the reference cannot read).
docs-check: build
	$(DOCS_BUILD) --strict

# stubtest compares the hand-written stubs with the built module, so lint needs the build.
lint: build
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	$(VENV)/bin/ruff check python tests examples benchmarks
	$(VENV)/bin/ruff format --check python tests examples benchmarks
	$(PY) -m mypy.stubtest belated --mypy-config-file tests/typing/stubtest.ini \
		--allowlist tests/typing/stubtest-allowlist.txt

cargo-test:
	cargo test --workspace --quiet

# The crates a Rust user depends on stay publishable: packaged, and built from the package as crates.io
# would build them (the unpublished path dependencies through cargo's temporary local registry).
# Cargo takes a registry crate of an unchanged version to be unchanged: it reuses an earlier run's
# unpacked copy of our crates (in $CARGO_HOME/registry/src/-<hash>/) and their compiled artifacts.
# The check builds in a target directory of its own, so that everything named belated there is the
# packaged crates' and is removed first, with the unpacked copies.
CARGO_HOME ?= $(HOME)/.cargo
PACKAGE_TARGET := target/package-check
package:
	rm -rf $(CARGO_HOME)/registry/src/-*/belated-* $(PACKAGE_TARGET)/debug/.fingerprint/belated-* \
		$(PACKAGE_TARGET)/debug/deps/*belated*
	cargo package --quiet --allow-dirty --target-dir $(PACKAGE_TARGET) -p belated-core -p belated-render -p belated

pytest: build
	$(PY) -m pytest

bench: build
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) target
