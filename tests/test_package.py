import importlib


def test_packages_import():
    for name in ("observer", "obclient", "proto"):
        assert importlib.import_module(name).__doc__
