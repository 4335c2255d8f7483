"""Web assets served by recsvc (see recsvc.http.static)."""
