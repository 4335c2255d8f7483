"""The recsvc benchmark: a real recsvc process on 127.0.0.1 under bounded load, one table out.

Run it with ``make bench`` or ``python3 -m bench [--duration S | --smoke]``.
It measures; it never asserts a timing. See ``bench/run.py`` for the
scenarios and ``bench/load.py`` for the two load generators (wrk when
installed, a standard-library one otherwise).
"""
