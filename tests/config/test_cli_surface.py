"""What every console script shows a new user: `--version`, and obsim without its extra.

The scripts are run as installed (the venv's bin directory, beside this interpreter), never
imported: the entry points in pyproject.toml are part of what is tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SCRIPTS = ("observer", "obctl", "obsim", "obrelay")


def run(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("script", SCRIPTS)
def test_version_prints_the_distribution_version(script):
    done = run(BIN / script, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{script} {metadata.version('observer')}\n" and done.stderr == ""


def test_obsim_without_its_extra_says_what_to_install(tmp_path):
    """The extra's modules hidden (as after a plain `pip install observer`): one line, exit 2,
    for `--help` as for a run; `--version` still answers."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['websockets'] = None   # as if not installed\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    for args in (["--help"], ["--exchanges", "kraken"]):
        done = run(BIN / "obsim", *args, env=env)
        assert done.returncode == 2, done
        assert done.stderr == "obsim needs its extra: pip install 'observer[sim]'\n"
        assert done.stdout == ""
    assert run(BIN / "obsim", "--version", env=env).returncode == 0
    assert run(BIN / "obsim", "--help").returncode == 0          # with the extra: usage


def test_feed_and_ca_file_help_say_what_they_take():
    text = " ".join(run(BIN / "observer", "--help").stdout.split())
    assert "it takes no URL" in text and "obsim --write-config" in text
    assert "extra CAs to trust for the --feed feeds" in text and "it changes no URL" in text
