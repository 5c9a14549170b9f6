"""obsim's version line, for `--version` before and after its extra is checked."""

from __future__ import annotations


def version_text() -> str:
    from importlib import metadata

    try:
        return f"obsim {metadata.version('observer')}"
    except metadata.PackageNotFoundError:
        return "obsim (version unknown: not installed)"
