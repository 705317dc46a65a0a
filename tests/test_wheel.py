"""The wheel users install: one abi3 wheel, built once by ``make wheel``, run from fresh venvs.

Every CPython 3.10-3.13 found on this machine (on PATH as ``python3.X``, or under pyenv) gets a new venv
holding only the wheel and its declared dependencies, where ``tests/wheel_smoke.py`` runs; a version
that is absent is skipped, by name. Linux only: the wheel built here is a manylinux one.
"""

import glob
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MINORS = (10, 11, 12, 13)

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the wheel built here is for Linux"),
    # A cold build of the wheel compiles the whole workspace for the manylinux target.
    pytest.mark.timeout(1200),
]


def find_python(minor):
    """An interpreter of CPython 3.<minor>, checked by running it; None if there is none."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which(f"python3.{minor}")]
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.{minor}.*/bin/python3.{minor}"), reverse=True)
    for exe in filter(None, candidates):
        probe = subprocess.run(
            [exe, "-c", "import sys; print(sys.implementation.name, *sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode == 0 and probe.stdout.split() == ["cpython", "3", str(minor)]:
            return exe
    return None


@pytest.fixture(scope="module")
def wheel():
    subprocess.run(["make", "--no-print-directory", "-s", "wheel"], cwd=ROOT, check=True, timeout=1100)
    wheels = sorted((ROOT / "target" / "wheels").glob("belated-*.whl"))
    assert len(wheels) == 1, f"make wheel should leave exactly one wheel, found {wheels}"
    return wheels[0]


def test_one_abi3_wheel_for_old_glibc(wheel):
    tags = re.fullmatch(r"belated-[^-]+-cp310-abi3-(?P<platforms>[^-]+)\.whl", wheel.name)
    assert tags, f"{wheel.name} is not a cp310-abi3 wheel"
    glibc = [
        (int(major), int(minor)) for major, minor in re.findall(r"manylinux_(\d+)_(\d+)_", tags["platforms"])
    ]
    assert glibc and max(glibc) <= (2, 28), f"{wheel.name} needs a glibc newer than 2.28"


def test_wheel_metadata_and_license(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(re.search(r"\.dist-info/licenses/LICENSE$", name) for name in names), names
    assert "Requires-Python: >=3.10" in metadata
    assert "License-Expression: MIT" in metadata
    description = metadata.partition("\n\n")[2]
    assert re.findall(r"^## .*", description, re.MULTILINE)[0] == "## Install", (
        "the README opens with Install"
    )
    extras = set(re.findall(r"^Provides-Extra: (\S+)", metadata, re.MULTILINE))
    assert extras == {"dask", "ray"}, f"only user-facing extras belong in the metadata, not {extras}"


def test_sdist_carries_the_license(wheel):
    (sdist,) = wheel.parent.glob("belated-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(re.fullmatch(r"belated-[^/]+/LICENSE", name) for name in names), names


def elf_sections(data):
    """Section names of a 64-bit little-endian ELF file."""
    assert data[:6] == b"\x7fELF\x02\x01", "not a 64-bit little-endian ELF file"
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(index):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + index * shentsize
        )
        return name, offset, size

    _, strings_at, strings_size = header(shstrndx)
    strings = data[strings_at : strings_at + strings_size]
    return {strings[name : strings.index(b"\0", name)].decode() for name, _, _ in map(header, range(shnum))}


def test_extension_is_stripped(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (library,) = [n for n in archive.namelist() if n.endswith(".so")]
        data = archive.read(library)
    sections = elf_sections(data)
    assert ".text" in sections
    assert not sections & {".symtab", ".debug_info", ".debug_line"}, sorted(sections)
    print(f"{wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB; {library}: {len(data) / 1e6:.2f} MB")


@pytest.mark.parametrize("minor", MINORS, ids=[f"py3{m}" for m in MINORS])
def test_fresh_venv_runs_the_tutorial(wheel, minor, tmp_path):
    python = find_python(minor)
    if python is None:
        pytest.skip(f"CPython 3.{minor} is not installed here")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    venv_python = venv / "bin" / "python"
    subprocess.run(
        [str(venv_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=600,
    )
    # Run from an empty directory, so `import belated` can only find the installed wheel.
    smoke = subprocess.run(
        [str(venv_python), str(ROOT / "tests" / "wheel_smoke.py"), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert f"on Python 3.{minor}." in smoke.stdout, smoke.stdout
    assert (tmp_path / "example1.png").stat().st_size > 0
