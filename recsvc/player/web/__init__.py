"""The web player's page and script (CONTRACT 7), served by recsvc.http.static."""
