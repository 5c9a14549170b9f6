"""Helpers shared by the test suite (run with tests/ on sys.path: see pyproject's pytest
options)."""
