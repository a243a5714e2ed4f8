"""`idgate audit ...`: the commands an operator or an investigator runs on audit records, without a
server: verify the hash chain across segment files."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(sub: Any) -> None:
    """The `audit` command and its subcommands, on the top-level parser's subparsers."""
    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain across rotated files")
    verify.add_argument("files", nargs="+", type=Path)
    audit_sub.add_parser("anchor-key", help="print a new EC P-256 private key (PEM) for audit.shipping.anchors."
                                            "key_file to stdout")


def run(args: argparse.Namespace) -> int:
    commands = {"verify": cmd_verify, "anchor-key": cmd_anchor_key}
    return commands[args.audit_command](args)


def cmd_anchor_key(args: argparse.Namespace) -> int:
    from proxy.keys import new_private_key_pem

    sys.stdout.write(new_private_key_pem().decode("ascii"))
    return EXIT_OK


class TerminalProgress:
    """`audit verify`'s progress on a terminal: one line (file, records so far) rewritten in place at
    most every `interval` seconds, and erased before the results are printed."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic, interval: float = 0.5) -> None:
        self._stream, self._clock, self._interval = stream, clock, interval
        self._due = float("-inf")
        self._shown = False

    def __call__(self, path: Path | str, records: int) -> None:
        now = self._clock()
        if now < self._due:
            return
        self._due = now + self._interval
        self._stream.write(f"\r\x1b[Kaudit verify: {path}: {records} record(s) so far")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


def progress_for(stream: TextIO) -> TerminalProgress | None:
    """Progress only for a person watching: never into a pipe, a file or a CI log."""
    return TerminalProgress(stream) if stream.isatty() else None


def cmd_verify(args: argparse.Namespace) -> int:
    from proxy.audit import segment_files, verify_files

    files: list[Path] = []
    for given in args.files:
        files.extend(segment_files(given) if len(args.files) == 1 else [given])
    progress = progress_for(sys.stderr)
    try:
        report = verify_files(files, progress)
    finally:
        if progress is not None:
            progress.clear()
    for problem in report.problems:
        print(problem, file=sys.stderr)
    status = "ok" if report.ok else "FAILED"
    since = f", from seq {report.starts_after + 1} (earlier segments deleted by retention)" \
        if report.starts_after else ""
    print(f"audit verify: {status}: {report.records} record(s) in {report.files} file(s){since}")
    return EXIT_OK if report.ok else EXIT_FAILED
