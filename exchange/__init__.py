"""Exchange: a hub through which government departments share data.

The core package holds the domain models and errors that every other layer
(``policy``, ``audit``, ``adapters``) builds on, the store, the services, the
gRPC server and the command line.
"""

__version__ = "0.1.0"
