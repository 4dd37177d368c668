"""The gRPC server: handlers for each service, error mapping, and the process that serves them."""
