"""Developer scripts, run as files (`python tools/mypy_gate.py`); a package so that the tests import them as tools.X."""
