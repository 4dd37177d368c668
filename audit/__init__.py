"""The tamper-evident audit log (RFC 9162 Merkle tree with signed checkpoints).

Every exchange and every rights or catalog change will be appended here; the
package is reserved by the layout and filled by the audit issue.
"""
