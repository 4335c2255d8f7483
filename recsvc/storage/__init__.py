"""Where state lives: the SQLite store, the recording files, the retry counters."""
