"""Web assets served by recsvc (see recsvc.static_files)."""
