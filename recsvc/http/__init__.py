"""The HTTP side: the protocol, the server, routes, the API handlers, the table of answers, OpenAPI."""
