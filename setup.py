"""The compiled part of the build: proto/_latch_c.c (everything else is in pyproject.toml).

`optional=True`: on a machine without a C compiler the install still succeeds and
proto/latch.py runs its pure-Python code (slower for busy-polling clients, same bytes).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("proto._latch_c", ["proto/_latch_c.c"], optional=True,
                             extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra",
                                                 "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers",
                                                 "-Wno-cast-function-type"])])
