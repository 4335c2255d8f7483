"""What the service does: the play service, the workers, downloads, media, cache, links, Twilio."""
