"""``python -m recsvc`` and the ``recsvc`` command: the Python version first, then recsvc.cli."""

import sys

from .python_version import require_supported_python


def run():
    """The entry point: imports the command line only on a Python that can read it."""
    require_supported_python()
    from .cli import main
    return main()


if __name__ == "__main__":
    sys.exit(run())
