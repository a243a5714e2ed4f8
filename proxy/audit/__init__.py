"""The tamper-evident, durable audit log: hash-chained JSON lines, group-committed with fsync before
a request may act, rotated into segments that `verify_files` checks as one chain (format in chain.py),
the oldest of them deleted by retention only when configured and announced in the chain first."""

from proxy.audit.chain import VerifyReport, verify_files
from proxy.audit.log import AuditLog
from proxy.audit.sink import segment_files

__all__ = ["AuditLog", "VerifyReport", "segment_files", "verify_files"]
