"""The ``exchange`` command: runs the hub, and calls it as a client with a principal's certificate."""
