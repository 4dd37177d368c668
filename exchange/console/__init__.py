"""The web console: the hub's pages for the people who run the rights and read the audit log.

It is served by the hub itself, on its own HTTPS port, and calls the same services as the gRPC
handlers with the signed-in person as the actor: it holds no power of its own.
"""
