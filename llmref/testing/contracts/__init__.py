"""Contract suites: the checks every entry of a registry must pass (private for now).

One module per area (``quant``, ``attention``, ``position``, ``cache``, ``decoder``).
Each exposes plain functions ``check_<thing>(spec, ...)`` that raise
``AssertionError`` with a message naming the entry; ``tests/testing/`` parametrizes
them over every registered entry, so registering a variant (the library's own or a
worked example from ``tests/extending/``) is what makes it tested.
"""
