"""A running recsvc: the app that wires the parts, serving processes, log lines, the jobs view."""
