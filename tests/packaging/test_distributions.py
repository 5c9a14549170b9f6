"""The two distributions install on their own: obclient (client/) alone, beside proto-plus, and
observer (the root) on top of it, each into a fresh virtual environment.

Cheap by construction: each wheel is built once per session from a copy of its source tree (so
the checkout gets no build/ or egg-info), without build isolation (the running environment's
setuptools; `make venv` installs one new enough); each fresh venv is made without pip and
installed into by the running pip (`pip --python`), offline (`--no-index --no-deps`). Runtime
dependencies come from the running environment through a directory of links to exactly the
distributions asked for (package, compiled libraries and metadata), so `pip check` sees them and
nothing else is importable: a strategy's venv has numpy and msgpack, never greenlet or orjson.
Only proto-plus comes from the package index; that test skips (saying so) when the index cannot
be reached, and fails on anything else.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 600
RUN_TIMEOUT_S = 120
SOURCE_IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.so",
                                       ".venv", ".pytest_cache")


def run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=kw.pop("timeout", RUN_TIMEOUT_S), **kw)


def checked(args, **kw) -> subprocess.CompletedProcess:
    done = run(args, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{done.stdout}\n{done.stderr}"
    return done


def pip(*args) -> list:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def build_wheel(source: Path, out: Path) -> Path:
    checked(pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", out,
                source), timeout=BUILD_TIMEOUT_S)
    name = source.name if source.name == "client" else "observer"
    wheels = sorted(out.glob(("obclient" if name == "client" else "observer") + "-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """The obclient and observer wheels, built once from copies of their source trees."""
    work = tmp_path_factory.mktemp("dists")
    client_src = work / "src" / "client"
    shutil.copytree(ROOT / "client", client_src, ignore=SOURCE_IGNORE)
    server_src = work / "src" / "server"
    server_src.mkdir()
    for name in ("observer", "obsim"):
        shutil.copytree(ROOT / name, server_src / name, ignore=SOURCE_IGNORE)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, server_src / name)
    out = work / "wheels"
    out.mkdir()
    return {"obclient": build_wheel(client_src, out), "observer": build_wheel(server_src, out)}


def linked_dists(where: Path, names) -> Path:
    """A directory of links to these installed distributions (their top-level entries), for a
    .pth line in a fresh venv: the dependencies without the network and without the rest."""
    where.mkdir()
    for name in names:
        dist = importlib.metadata.distribution(name)
        site = Path(dist.locate_file(""))
        for entry in {Path(f).parts[0] for f in dist.files or ()} - {".."}:
            if (site / entry).exists() and not (where / entry).exists():
                (where / entry).symlink_to(site / entry)
    return where


def fresh_venv(path: Path, deps=(), *, wheel_files=()) -> Path:
    """`python -m venv` without pip; the wheels installed offline; `deps` linked in."""
    checked([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip",
             path])
    python = path / "bin" / "python"
    site = checked([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                   ).stdout.strip()
    if deps:
        linked = linked_dists(path / "linked-deps", deps)
        Path(site, "linked_deps.pth").write_text(f"{linked}\n")
    if wheel_files:
        checked(pip("--python", python, "install", "-q", "--no-index", "--no-deps",
                    *wheel_files))
    return python


def importable(python: Path, name: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({name!r}) else 3)"
    return run([python, "-I", "-c", code]).returncode == 0


def test_obclient_alone_imports_and_runs_obctl(wheels, tmp_path):
    python = fresh_venv(tmp_path / "venv", ["numpy", "msgpack"],
                        wheel_files=[wheels["obclient"]])
    checked(pip("--python", python, "check"))
    out = checked([python, "-I", "-c", "import obclient, obproto, obproto.latch, obrelay; "
                   "print(obproto.__file__); print(obproto.latch._latch_c is not None)"]).stdout
    assert str(tmp_path / "venv") in out.splitlines()[0]     # the installed copy, not the tree
    for server_only in ("observer", "obsim", "greenlet", "orjson", "posix_ipc"):
        assert not importable(python, server_only), f"{server_only} came with obclient"
    bin_dir = python.parent
    usage = checked([bin_dir / "obctl", "--help"], cwd=tmp_path).stdout
    assert "snapshot" in usage and "Traceback" not in usage
    assert checked([bin_dir / "obrelay", "--help"], cwd=tmp_path).stdout.startswith("usage")
    no_nats = run([bin_dir / "obrelay"], cwd=tmp_path)     # the relay extra is not installed
    assert no_nats.returncode == 2
    assert no_nats.stderr.strip() == ("obrelay: obrelay needs nats-py: "
                                      "pip install 'obclient[relay]'")
    site = Path(out.splitlines()[0]).parent.parent
    for package in ("obclient", "obproto", "obrelay"):
        assert (site / package / "py.typed").is_file(), package


@pytest.mark.network
def test_obclient_beside_proto_plus(wheels, tmp_path):
    """proto-plus installs the import package named proto; ours is obproto, so both import and
    installing one never overwrites a file of the other."""
    python = fresh_venv(tmp_path / "venv", ["numpy", "msgpack"],
                        wheel_files=[wheels["obclient"]])
    ours = checked([python, "-I", "-c", "import obproto; print(obproto.__file__)"]).stdout.strip()
    before = Path(ours).read_bytes()
    got = run(pip("--python", python, "install", "-q", "proto-plus"), timeout=BUILD_TIMEOUT_S)
    if got.returncode != 0:
        reach = run(pip("download", "-q", "--no-deps", "-d", tmp_path / "probe", "proto-plus"),
                    timeout=BUILD_TIMEOUT_S)
        if reach.returncode != 0:
            pytest.skip(f"the package index is unreachable (proto-plus comes from it): "
                        f"{reach.stderr.strip().splitlines()[-1:]}")
        pytest.fail(f"pip install proto-plus failed:\n{got.stdout}\n{got.stderr}")
    out = checked([python, "-I", "-c",
                   "import proto, obproto, obclient, obproto.layout\n"
                   "class M(proto.Message):\n    n = proto.Field(proto.INT64, number=1)\n"
                   "print(M(n=5).n); print(proto.__file__); print(obproto.__file__)"]).stdout
    n, theirs, ours_after = out.split()
    assert n == "5" and ours_after == ours and "obproto" not in theirs
    assert Path(ours).read_bytes() == before


def test_observer_installs_on_obclient(wheels, tmp_path):
    python = fresh_venv(tmp_path / "venv", ["numpy", "msgpack", "greenlet", "orjson"],
                        wheel_files=[wheels["obclient"], wheels["observer"]])
    checked(pip("--python", python, "check"))
    checked([python, "-I", "-c", "import observer.cli, observer.process.supervisor, "
             "observer.book.book as b, obsim.observerproc; assert b._book_c is not None"])
    usage = checked([python.parent / "observer", "--help"], cwd=tmp_path).stdout
    assert "--feed" in usage and "Traceback" not in usage
    requires = checked([python, "-I", "-c", "import importlib.metadata as m; "
                        "print(m.requires('observer'))"]).stdout
    assert "obclient" in requires
