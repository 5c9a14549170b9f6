"""The compiled part of the observer distribution: observer/book/_book_c.c and
observer/feeds/_binance_c.c (everything else is in pyproject.toml; obproto's _latch_c is built by
client/setup.py, the obclient distribution).

`optional=True`: on a machine without a C compiler the install still succeeds and
observer/book/book.py and observer/feeds/binance.py run their pure-Python code (the same books,
more interpreter time per message).
"""

from setuptools import Extension, setup

COMPILE_ARGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-Wno-cast-function-type"]

setup(ext_modules=[
    Extension("observer.book._book_c", ["observer/book/_book_c.c"], optional=True,
              extra_compile_args=COMPILE_ARGS),
    Extension("observer.feeds._binance_c", ["observer/feeds/_binance_c.c"], optional=True,
              extra_compile_args=COMPILE_ARGS),
])
