"""docs/CLIENT.md and README's Python section, run: every ```python block is a whole program,
executed as a user would run it (its own interpreter, OBSERVER_SOCKET in the environment)
against a live observer fed by obsim (Kraken BTC/USD and ETH/USD, Coinbase BTC-USD)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from venuekit import venue_observer

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 60.0
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(relative_path):
    text = (ROOT / relative_path).read_text(encoding="utf-8")
    return [(f"{relative_path}#{i + 1}", code) for i, code in enumerate(BLOCK.findall(text))]


CLIENT_BLOCKS = python_blocks("docs/CLIENT.md")
README_BLOCKS = python_blocks("README.md")


def test_the_guide_has_an_example_per_topic():
    text = (ROOT / "docs/CLIENT.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", text, re.M)
    for topic in ("Connect", "Books and names", "Snapshots", "Updates", "Busy-poll and pinning",
                  "asyncio", "Errors", "Restarts"):
        assert topic in sections
    assert len(CLIENT_BLOCKS) >= 9
    assert "docs/CLIENT.md" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def observer():
    with venue_observer() as obs:
        yield obs


@pytest.mark.parametrize("where, code", CLIENT_BLOCKS + README_BLOCKS,
                         ids=[w for w, _ in CLIENT_BLOCKS + README_BLOCKS])
def test_example_runs_against_a_live_observer(observer, where, code):
    env = dict(os.environ, OBSERVER_SOCKET=observer.socket_path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=RUN_TIMEOUT_S, cwd=observer.workdir)
    assert done.returncode == 0, f"{where} failed:\n{done.stderr}"
    assert done.stderr == "", f"{where} wrote to stderr:\n{done.stderr}"
    assert done.stdout.strip(), f"{where} printed nothing"
    print(f"--- {where}\n{done.stdout}")
