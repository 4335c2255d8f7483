"""The demo page's assets, served by recsvc.http.static."""
