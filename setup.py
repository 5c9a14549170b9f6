"""The compiled part of the observer distribution: observer/book/_book_c.c and
observer/feeds/_binance_c.c (everything else is in pyproject.toml; obproto's _latch_c is built by
client/setup.py, the obclient distribution). _book_c.c includes obproto's _pyint64.h, one helper
shared with _latch_c.c: from this checkout's client/obproto, else from the installed obproto
(a build from the server's tree alone, beside an installed obclient).

`optional=True`: on a machine without a C compiler the install still succeeds and
observer/book/book.py and observer/feeds/binance.py run their pure-Python code (the same books,
more interpreter time per message).
"""

import importlib.util
from pathlib import Path

from setuptools import Extension, setup

SHARED_HEADER = "_pyint64.h"

COMPILE_ARGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-Wno-cast-function-type"]


def obproto_headers() -> str:
    """The directory holding obproto's shared C header (see the docstring)."""
    checkout = Path(__file__).resolve().parent / "client" / "obproto"
    if (checkout / SHARED_HEADER).is_file():
        return str(checkout)
    spec = importlib.util.find_spec("obproto")         # finds it without importing it
    for where in (spec.submodule_search_locations or []) if spec else []:
        if (Path(where) / SHARED_HEADER).is_file():
            return where
    return str(checkout)                    # not found: the optional build fails and says so


setup(ext_modules=[
    Extension("observer.book._book_c", ["observer/book/_book_c.c"], optional=True,
              include_dirs=[obproto_headers()], extra_compile_args=COMPILE_ARGS),
    Extension("observer.feeds._binance_c", ["observer/feeds/_binance_c.c"], optional=True,
              extra_compile_args=COMPILE_ARGS),
])
