"""The `obsim` console script: says which extra to install before anything needs it.

Why a module of its own: obsim serves WebSocket with the `websockets` library and makes its
certificate with `cryptography`, both in the `sim` extra, and obsim/cli.py imports the
venues (which import them) at its top. A plain `pip install observer` has neither, and
`obsim --help` would be a ModuleNotFoundError traceback. This entry point tries them first and
otherwise says, in one line on stderr and exit 2, what to install. `--version` needs neither.
"""

from __future__ import annotations

import sys

from obsim.version import version_text

EXIT_USAGE = 2
SIM_EXTRA = ("websockets", "cryptography")      # what pyproject's `sim` extra installs
MISSING_EXTRA = "obsim needs its extra: pip install 'observer[sim]'"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--version" in args:
        print(version_text())
        return 0
    for name in SIM_EXTRA:
        try:
            __import__(name)
        except ImportError:         # ModuleNotFoundError, or an import blocked on purpose
            print(MISSING_EXTRA, file=sys.stderr)
            return EXIT_USAGE
    from obsim.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
