"""Worked examples of extending llmref (shown on the docs' "Extending llmref" page).

Each module here is one toy variant that registers itself on import; they ship with
the tests, never with the library. ``tests/conftest.py`` imports them (one line
each), so the contract suites in ``tests/testing/`` pick them up.
"""
