"""The compiled part of the obclient distribution: obproto/_latch_c.c (everything else is in
pyproject.toml). Its obproto/_pyint64.h is shipped too (package data), for the observer
distribution's _book_c.c, which includes it.

`optional=True`: on a machine without a C compiler the install still succeeds and
obproto/latch.py runs its pure-Python code (the same bytes, more interpreter time per read).
"""

from setuptools import Extension, setup

COMPILE_ARGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-Wno-cast-function-type"]

setup(ext_modules=[
    Extension("obproto._latch_c", ["obproto/_latch_c.c"], optional=True,
              depends=["obproto/_pyint64.h"],
              extra_compile_args=COMPILE_ARGS),
])
