"""The Python version recsvc needs, checked before any other module of it is imported.

Every other module uses syntax and library calls of Python 3.10 (``X | Y``
at run time, ``dataclass(slots=...)``, ...): an older Python would stop on
them with a traceback that says nothing useful. So ``python -m recsvc`` and
the ``recsvc`` command run ``require_supported_python()`` first, and this
module, ``__main__`` and the package's ``__init__`` stay readable by old
Pythons: no ``X | Y`` annotations, no ``match``, no f-string ``=``.
"""

import sys

MINIMUM = (3, 10)  # as pyproject.toml's requires-python


def unsupported_python(version=None):
    """The one line to print when ``version`` (default: this Python) is too old, else None."""
    version = sys.version_info if version is None else version
    if tuple(version[:2]) >= MINIMUM:
        return None
    return "recsvc: error: recsvc needs Python %d.%d or newer; this is Python %s" % (
        MINIMUM[0], MINIMUM[1], ".".join(str(part) for part in version[:3]))


def require_supported_python(version=None):
    """Exit with status 2 and one line on stderr when this Python is too old."""
    line = unsupported_python(version)
    if line is not None:
        sys.stderr.write(line + "\n")
        raise SystemExit(2)
