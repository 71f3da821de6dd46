"""scripts/venv.sh, behind `make demo` / `make test`: it picks a supported Python
from PATH by itself, says in one line when there is none, and rebuilds a .venv
made by another version or left half-installed.

Interpreters here are small shell scripts that answer the version query, make
a fake venv, and log the pip installs, so no package is installed."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "venv.sh")
TOOLS = ("sh", "sed", "cat", "cksum", "dirname", "basename", "mkdir", "rm", "touch", "chmod")

FAKE_PYTHON = """#!/bin/sh
# A stand-in interpreter reporting Python {version}.
case "$1" in
  -c) echo "{version}" ;;
  -m)
    if [ "$2" = venv ]; then
      mkdir -p "$3/bin"
      cp "$0" "$3/bin/python"
    else
      echo "$*" >> "{log}"
    fi ;;
esac
"""


def _bin(tmp_path, pythons: dict[str, str]):
    """A PATH of the tools venv.sh uses plus fake interpreters {name: version}."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in (*TOOLS, "cp"):
        os.symlink(shutil.which(tool), bindir / tool)
    log = tmp_path / "pip.log"
    for name, version in pythons.items():
        path = bindir / name
        path.write_text(FAKE_PYTHON.format(version=version, log=log))
        path.chmod(0o755)
    return str(bindir), log


def _run(tmp_path, path, python="", req="requirements-dev.txt"):
    work = tmp_path / "repo"
    if not work.exists():
        work.mkdir()
        for f in ("requirements.txt", "requirements-tpu.txt", "requirements-dev.txt"):
            shutil.copy(os.path.join(ROOT, f), work / f)
    env = {"PATH": path, "PYTHON": python}
    return subprocess.run(
        ["sh", SCRIPT, req], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )


def test_picks_the_first_supported_python_when_python311_is_absent(tmp_path):
    path, log = _bin(tmp_path, {"python3": "3.10", "python3.12": "3.12", "python3.13": "3.13"})
    r = _run(tmp_path, path)
    assert r.returncode == 0, r.stderr
    assert "python3.12 (Python 3.12)" in r.stdout
    installs = log.read_text().splitlines()
    assert installs[-1] == "-m pip install -q -r requirements-dev.txt"
    # A second run with nothing changed installs nothing.
    before = len(installs)
    assert _run(tmp_path, path).returncode == 0
    assert len(log.read_text().splitlines()) == before


def test_no_supported_python_is_one_line_naming_versions_and_python_flag(tmp_path):
    path, _ = _bin(tmp_path, {"python3": "3.10"})
    r = _run(tmp_path, path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "3.11 3.12 3.13" in lines[0] and "PYTHON=" in lines[0]


@pytest.mark.parametrize("python, words", [("python3.14", "Python 3.14"), ("nope", "no such")])
def test_unsupported_or_missing_python_flag_is_one_line(tmp_path, python, words):
    path, _ = _bin(tmp_path, {"python3.14": "3.14"})
    r = _run(tmp_path, path, python=python)
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_venv_of_another_version_is_rebuilt(tmp_path):
    path, _ = _bin(tmp_path, {"python3.11": "3.11", "python3.12": "3.12"})
    assert _run(tmp_path, path, python="python3.12").returncode == 0
    r = _run(tmp_path, path)  # now python3.11 is picked
    assert r.returncode == 0
    assert "rebuilding .venv: it was built by Python 3.12" in r.stdout
    assert "creating .venv with python3.11" in r.stdout


def test_interrupted_install_is_rebuilt(tmp_path):
    path, _ = _bin(tmp_path, {"python3.11": "3.11"})
    assert _run(tmp_path, path).returncode == 0
    (tmp_path / "repo" / ".venv" / ".incomplete").touch()  # as a killed pip install leaves it
    r = _run(tmp_path, path)
    assert r.returncode == 0 and "rebuilding .venv: an install into it was interrupted" in r.stdout
    assert not (tmp_path / "repo" / ".venv" / ".incomplete").exists()


def test_changed_requirements_reinstall(tmp_path):
    path, log = _bin(tmp_path, {"python3.11": "3.11"})
    assert _run(tmp_path, path).returncode == 0
    before = len(log.read_text().splitlines())
    with open(tmp_path / "repo" / "requirements.txt", "a") as f:  # pulled in through -r
        f.write("# changed\n")
    assert _run(tmp_path, path).returncode == 0
    assert len(log.read_text().splitlines()) > before
