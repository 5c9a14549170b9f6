"""The documentation resolves: what docs/ARCHITECTURE.md names exists, and every reference in the
tree points at something the repository holds.

- The module map names every package and module, and each name imports.
- The data path is a list of steps, each naming functions that resolve by import and getattr.
- Every contract cited as `C<n>` anywhere in the tree is one docs/ARCHITECTURE.md defines.
- No file cites design notes that live outside the repository (the notes this project started
  from); every `NAME.md` mentioned exists, every `docs/...` path exists, and a cited section
  ("docs/EXCHANGES.md section 1b") is a heading of that file.
- Paths to code in README.md and docs/*.md exist (`observer/shm/writer.py`, or
  `observer/shard/runner.Shard` for a name in a module).

When a module moves, this test names every place that still says the old path.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ARCHITECTURE = DOCS / "ARCHITECTURE.md"
THIS_FILE = Path(__file__).resolve()

SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache",
             ".mypy_cache", ".ruff_cache", ".tox", "node_modules", "fixtures"}
TEXT_SUFFIXES = {".py", ".c", ".h", ".md", ".toml", ".service", ".txt", ".cfg", ".ini", ".sh"}
TEXT_NAMES = {"Makefile", "run"}

# `C<n>` that are not contract citations: the C0 and C1 control-character sets, and C11 the
# language standard. Anything else spelled C<n> must be a contract.
NOT_CONTRACTS = re.compile(
    r"\bC0\b"
    r"|\bC1(?=\s+controls\b)"
    r"|\bC11(?=\s+(?:and\s+libc|reader|observer\s+reader)\b)"
    r"|(?<=\bin\s)C11\b"
    r"|(?<=\bIn\s)C11\b")
CONTRACT = re.compile(r"\bC(\d+)\b")
OUTSIDE_NOTES = re.compile(r"\b(?:PROTOCOLS|MEASUREMENTS|STYLE)\.md\b|\bSTYLE\s+\d+\b")
MD_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[A-Za-z_][\w-]*\.md)\b")
DOCS_PATH = re.compile(r"(?<![\w/.-])(docs/[\w./-]*\w)")
SECTION = re.compile(r"\b([A-Z][\w-]*\.md),?\s+sections?\s+"
                     r"(\d+[a-z]?(?:(?:,\s*|\s+and\s+)\d+[a-z]?)*)")


def candidate(path: Path) -> bool:
    name = path.name
    return not (name in SKIP_DIRS or name.startswith(".") or name.endswith(".egg-info")
                or name in ("tests", "bench"))


def package_root_dirs() -> dict[str, Path]:
    """The importable top-level packages of the repository, by name: a directory with an
    `__init__.py` whose parent has none, at the top or one level down (a distribution's folder),
    outside tests/ and bench/. Derived, so a moved, renamed or new package counts."""
    roots = {}
    for base in [ROOT, *sorted(p for p in ROOT.iterdir() if p.is_dir())]:
        if base != ROOT and (not candidate(base) or (base / "__init__.py").exists()):
            continue
        for path in sorted(base.iterdir()):
            if path.is_dir() and candidate(path) and (path / "__init__.py").exists():
                roots.setdefault(path.name, path)
    return roots


def package_roots() -> list[str]:
    return sorted(package_root_dirs())


def path_bases() -> list[Path]:
    """Where a path in the docs may start: the repository, or a package's parent folder."""
    return [ROOT, *sorted({p.parent for p in package_root_dirs().values()} - {ROOT})]


def text_files():
    """Every text file of the tree, without walking into virtual environments or builds."""
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.resolve() == THIS_FILE:
                continue
            if path.suffix in TEXT_SUFFIXES or name in TEXT_NAMES:
                yield path


def sections(markdown: str) -> dict[str, str]:
    """`## Heading` -> the text under it, up to the next `## `."""
    out: dict[str, str] = {}
    for block in re.split(r"^## ", markdown, flags=re.M)[1:]:
        title, _, body = block.partition("\n")
        out[title.strip()] = body
    return out


def arch_section(title: str) -> str:
    found = sections(ARCHITECTURE.read_text())
    assert title in found, f"docs/ARCHITECTURE.md has no '## {title}' section"
    return found[title]


def dotted_names(text: str) -> list[str]:
    roots = "|".join(map(re.escape, package_roots()))
    return re.findall(rf"`((?:{roots})(?:\.[A-Za-z_]\w*)*)`", text)


def resolve(dotted: str):
    """Import the longest module prefix of `dotted`, then getattr the rest."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if isinstance(obj, types.ModuleType):
            name = ".".join(parts[: i + 1])
            try:
                spec = importlib.util.find_spec(name)
            except ModuleNotFoundError:  # obj is a module, not a package
                spec = None
            if spec is not None:
                obj = importlib.import_module(name)
                continue
        if not hasattr(obj, part):
            raise LookupError(f"`{dotted}`: {'.'.join(parts[:i])} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{line_of(text, offset)}"


def contracts_defined() -> set[int]:
    numbers = re.findall(r"^### C(\d+): ", ARCHITECTURE.read_text(), flags=re.M)
    assert numbers, "docs/ARCHITECTURE.md defines no contract (### C<n>: title)"
    return set(map(int, numbers))


# -- docs/ARCHITECTURE.md against the code ----------------------------------------------------

def test_contracts_are_numbered_from_1_without_holes():
    defined = contracts_defined()
    assert defined == set(range(1, max(defined) + 1))


def test_every_name_in_the_module_map_imports():
    names = dotted_names(arch_section("Module map"))
    assert len(names) >= 50, "the module map lists too few modules to be the map"
    failures = []
    for name in names:
        try:
            obj = resolve(name)
        except (ImportError, LookupError) as exc:
            failures.append(f"{name}: {exc}")
            continue
        if not isinstance(obj, types.ModuleType):
            failures.append(f"{name}: not a module")
    assert not failures, "module map names that do not import:\n" + "\n".join(failures)


def test_the_module_map_lists_every_package_and_module():
    listed = set(dotted_names(arch_section("Module map")))
    missing = []
    for root_dir in package_root_dirs().values():
        for path in sorted(root_dir.rglob("*.py")):
            rel = path.relative_to(root_dir.parent).with_suffix("")
            if any(part in SKIP_DIRS for part in rel.parts) or rel.name == "__main__":
                continue
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            if not (path.parent / "__init__.py").exists():
                continue  # a script beside a package, not importable as a module of it
            name = ".".join(parts)
            if name not in listed:
                missing.append(name)
    assert not missing, ("modules without a line in docs/ARCHITECTURE.md's module map:\n"
                         + "\n".join(missing))


def test_every_function_on_the_data_path_resolves():
    body = arch_section("Data path")
    steps = re.findall(r"^\d+\. (.+)$", body, flags=re.M)
    assert len(steps) >= 12, "the data path has too few steps to go from socket to client"
    failures = []
    for n, step in enumerate(steps, start=1):
        names = dotted_names(step)
        if not names:
            failures.append(f"step {n} names no function: {step[:60]}")
        for name in names:
            try:
                obj = resolve(name)
            except (ImportError, LookupError) as exc:
                failures.append(f"step {n}: {exc}")
                continue
            if isinstance(obj, types.ModuleType) or not callable(obj):
                failures.append(f"step {n}: `{name}` is not a function, method or class")
    assert not failures, "data path steps that do not resolve:\n" + "\n".join(failures)


def test_every_name_in_the_process_tree_resolves():
    body = arch_section("Processes")
    roots = "|".join(map(re.escape, package_roots()))
    names = re.findall(rf"(?<![\w.])((?:{roots})(?:\.[A-Za-z_]\w*)+)", body)
    assert len(names) >= 5, "the process tree names too few modules"
    failures = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, LookupError) as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "process tree names that do not resolve:\n" + "\n".join(failures)


def test_the_data_path_goes_from_the_socket_to_the_client_latch_read():
    """The stages the path must show, in this order (by the first step naming each)."""
    names = dotted_names(arch_section("Data path"))
    stages = ["observer.loom.calls.recv_into", "observer.net.tcp", "observer.net.tls",
              "observer.net.wsframe", "observer.feeds.binance", "observer.book.book.Book.apply",
              "obproto.latch.book_publisher", "observer.shm.writer.ShardWriter.flush",
              "obclient.stream.UpdateStream.wait", "obproto.latch.ring_reader",
              "obproto.latch.latch_read"]
    firsts = []
    for stage in stages:
        hits = [i for i, name in enumerate(names) if name.startswith(stage)]
        assert hits, f"the data path never names {stage}"
        firsts.append(hits[0])
    assert firsts == sorted(firsts), f"stages out of order: {list(zip(stages, firsts))}"


# -- references in the whole tree -------------------------------------------------------------

def test_every_contract_citation_names_a_defined_contract():
    defined = contracts_defined()
    bad = []
    for path in text_files():
        text = path.read_text(errors="replace")
        masked = NOT_CONTRACTS.sub(lambda m: " " * len(m.group()), text)
        for match in CONTRACT.finditer(masked):
            if int(match.group(1)) not in defined:
                bad.append(f"{where(path, text, match.start())}: {match.group()}")
    assert not bad, ("C<n> that docs/ARCHITECTURE.md does not define (a contract to add, or a "
                     "new non-contract use for NOT_CONTRACTS):\n" + "\n".join(bad))


def test_nothing_cites_notes_outside_the_repository():
    bad = []
    for path in text_files():
        text = path.read_text(errors="replace")
        for match in OUTSIDE_NOTES.finditer(text):
            bad.append(f"{where(path, text, match.start())}: {match.group()}")
    assert not bad, ("references to notes the repository does not hold (cite docs/ or a bench, "
                     "or say the rule in words):\n" + "\n".join(bad))


def md_exists(name: str, path: Path) -> bool:
    if "/" in name:
        return (ROOT / name).exists() or (path.parent / name).exists()
    return any(p.exists() for p in (ROOT / name, DOCS / name, path.parent / name))


def test_every_markdown_file_named_exists():
    bad = []
    for path in text_files():
        text = path.read_text(errors="replace")
        for match in MD_NAME.finditer(text):
            if not md_exists(match.group(1), path):
                bad.append(f"{where(path, text, match.start())}: {match.group(1)}")
    assert not bad, "*.md names that resolve to no file in the repository:\n" + "\n".join(bad)


def test_every_docs_path_exists():
    bad = []
    for path in text_files():
        text = path.read_text(errors="replace")
        for match in DOCS_PATH.finditer(text):
            target = match.group(1).rstrip(".")
            if not (ROOT / target).exists():
                bad.append(f"{where(path, text, match.start())}: {target}")
    assert not bad, "docs/ paths that do not exist:\n" + "\n".join(bad)


def test_every_cited_section_is_a_heading():
    bad = []
    for path in text_files():
        text = path.read_text(errors="replace")
        for match in SECTION.finditer(text):
            doc = DOCS / match.group(1)
            if not doc.exists():
                continue  # test_every_markdown_file_named_exists reports it
            headings = doc.read_text()
            for number in re.split(r",\s*|\s+and\s+", match.group(2)):
                if not re.search(rf"^#+ {re.escape(number)}\.\s", headings, flags=re.M):
                    bad.append(f"{where(path, text, match.start())}: {match.group(1)} "
                               f"has no section {number}")
    assert not bad, "sections cited that do not exist:\n" + "\n".join(bad)


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_code_paths_in_docs_exist(doc):
    """`observer/shm/writer.py`, `tests/shm/`, or `observer/shard/runner.Shard` (a name in a module)."""
    path = ROOT / doc if doc == "README.md" else DOCS / doc
    text = path.read_text()
    top = [p.name for p in ROOT.iterdir() if p.is_dir() and (candidate(p) or p.name in
                                                             ("tests", "bench"))]
    dirs = "|".join(map(re.escape, sorted({*top, *package_roots()})))
    bases = path_bases()
    bad = []
    for match in re.finditer(rf"(?<![\w/.~$-])((?:{dirs})/[\w./-]*\w)(?![\w<{{*])", text):
        target = match.group(1)
        if any((base / target).exists() for base in bases):
            continue
        module, _, attr = target.rpartition(".")
        found = any(module and (base / f"{module}.py").exists() for base in bases)
        if found and hasattr(resolve(module.replace("/", ".")), attr):
            continue
        if any((base / f"{target}.c").exists() for base in bases):
            continue  # a compiled module named by its import name (client/obproto/_latch_c)
        bad.append(f"{doc}:{line_of(text, match.start())}: {target}")
    assert not bad, "paths in the docs that do not exist:\n" + "\n".join(bad)
