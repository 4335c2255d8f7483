"""recsvc: call recordings served with a status contract that always ends.

See CONTRACT.md for the promise; README.md for how to run it.
"""

__version__ = "0.1.0"
