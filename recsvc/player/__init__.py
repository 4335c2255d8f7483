"""The players of CONTRACT 7: the Python client, recsvc fetch, their words, and the web player."""
