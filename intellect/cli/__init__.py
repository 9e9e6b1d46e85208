"""The command line: one click group per file, registered in ``main.py``. Logic lives outside this package."""
