"""Generated code for the exchange.v1 contract: do not edit."""
