"""Connectors from the hub to departmental backends (SQL, gRPC provider, HTTP/JSON, files).

Each adapter will sit behind one small interface chosen per resource; the
package is reserved by the layout and filled by the exchange issue.
"""
