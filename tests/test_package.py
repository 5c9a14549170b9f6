import importlib


def test_packages_import():
    for name in ("observer", "obclient", "obproto"):
        assert importlib.import_module(name).__doc__


def test_the_compiled_hot_paths_are_built_where_they_can_be():
    """client/obproto/_latch_c, observer/book/_book_c and observer/feeds/_binance_c are
    optional only for machines that cannot build them: with a C compiler and the Python headers
    present, a missing module is a broken build, not a reason to skip the tests that compare
    them with their Python references (tests/shm/test_latch_c.py, tests/book/test_book_c.py,
    tests/feeds/test_binance_scan.py)."""
    import os
    import shutil
    import sysconfig

    from observer.book import book
    from obproto import latch
    from observer.feeds import binance

    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which(compiler) and os.path.exists(headers):
        assert latch._latch_c is not None, (
            f"{compiler} and {headers} exist but obproto._latch_c did not build: "
            f"rerun `pip install -e .` and read its build output")
        assert latch.COMPILED or os.environ.get("OBSERVER_PURE_PYTHON")
        assert book._book_c is not None, (
            f"{compiler} and {headers} exist but observer.book._book_c did not build: "
            f"rerun `pip install -e .` and read its build output")
        assert book.COMPILED or os.environ.get("OBSERVER_PURE_PYTHON")
        assert binance.scan_diff is not None, (
            f"{compiler} and {headers} exist but observer.feeds._binance_c did not build: "
            f"rerun `pip install -e .` and read its build output")
