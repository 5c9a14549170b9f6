"""What every test gets: the process's root logger as it was before the test.

Why: a pytest-xdist worker runs many modules' tests in one process, in no fixed order, and some
tests configure the root logger in-process (`logs.setup` makes its own handler the only one, at
the level asked for). Left so, a later test on that worker sees INFO or DEBUG records it never
asked for (test_feedplan's caplog once held a `book_live` the default WARNING level hides).
"""

import logging

import pytest


@pytest.fixture(autouse=True)
def _root_logger_restored():
    """The root logger's level back, and the handlers the test added removed. Not pytest's
    own: it attaches a capture handler per phase (setup, call, teardown) and removes it itself."""
    root = logging.getLogger()
    level, handlers = root.level, set(root.handlers)
    yield
    root.setLevel(level)
    for handler in set(root.handlers) - handlers:
        if not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
