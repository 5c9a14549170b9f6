"""`make run`: the main job on its embedded default.

Until the observer exists this prints what the project is; later issues switch it to the
observer against the bundled exchange simulator.
"""

import platform
import sys

import observer


def main() -> int:
    print(f"observer {observer.__version__} on Python {platform.python_version()} ({sys.platform})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
