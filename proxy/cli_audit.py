"""`idgate audit ...`: the commands an operator or an investigator runs on audit records, without a
server: verify the hash chain across segment files; query records from local files, S3 or CloudWatch."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from proxy.core.model import Surface

if TYPE_CHECKING:
    from proxy.audit.query import RouteMatcher
    from proxy.audit.search import Search
    from proxy.audit.table import TableWriter
    from proxy.config import Config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _OneLineErrors(argparse.ArgumentParser):
    """A wrong option value is one line on stderr (exit 2), not the usage text with it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def add_parser(sub: Any) -> None:
    """The `audit` command and its subcommands, on the top-level parser's subparsers."""
    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, parser_class=_OneLineErrors)
    verify = audit_sub.add_parser("verify", help="check the hash chain across rotated files, and against signed "
                                                 "anchors (--anchors)", description=VERIFY_HELP)
    verify.add_argument("files", nargs="+", metavar="SOURCE",
                        help="segment files (one: with its rotated siblings), or one sink: "
                             "s3://BUCKET/PREFIX/INSTANCE/ or cloudwatch://GROUP/INSTANCE")
    verify.add_argument("--anchors", metavar="SOURCE",
                        help="where the signed anchors are: the shipper's anchors.jsonl, s3://BUCKET/PREFIX/INSTANCE/ "
                             "or cloudwatch://GROUP/INSTANCE")
    verify.add_argument("--anchor-key", type=Path, action="append", default=[], metavar="PEM",
                        help="the anchors' key (its public half will do; repeat for earlier keys); default: "
                             "audit.shipping.anchors.key_file of --config")
    verify.add_argument("--config", "-c", type=Path, help="idgate.yaml, for the anchor key")
    audit_sub.add_parser("anchor-key", help="print a new EC P-256 private key (PEM) for audit.shipping.anchors."
                                            "key_file to stdout")
    _add_query_parser(audit_sub)


def run(args: argparse.Namespace) -> int:
    commands = {"verify": cmd_verify, "anchor-key": cmd_anchor_key, "query": cmd_query}
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


VERIFY_HELP = """Check the hash chain of one writer's records: local segment files, or what a sink holds.
With --anchors, also check it against the signed anchors stored in a sink: a tail cut off, or rewritten
with a recomputed chain, is then found, and the missing range named.  Exit status: 0 when everything
checks, 1 when a problem was found, 2 for a bad option or a source that cannot be read."""


def cmd_verify(args: argparse.Namespace) -> int:
    from proxy.audit import segment_files
    from proxy.audit.anchored import anchor_lines, chain_segments, load_public_keys, verify_anchored
    from proxy.audit.chain import SegmentLines, file_lines, verify_files, verify_segments
    from proxy.audit.sources import SourceError, boto3_clients, open_source

    # A sink may hold a resent record twice (the same line under the same seq): those copies are skipped.
    remote = len(args.files) == 1 and "://" in args.files[0]
    progress = progress_for(sys.stderr)
    anchored = None
    try:
        clients = boto3_clients()
        instance: str | None = None
        notes: tuple[str, ...] = ()         # what a sink shows of tampering (delete markers, extra versions)
        if remote:
            source = open_source(args.files[0], clients)
            if len(source.chains) != 1:
                return _verify_usage(f"{args.files[0]}: holds {len(source.chains)} chains; name one instance")
            segments: list[SegmentLines] = chain_segments(source.chains[0])
            instance, notes = source.chains[0].name, source.notes
        else:
            paths = [Path(f) for f in args.files]
            files = segment_files(paths[0]) if len(paths) == 1 else paths
            segments = [(path, file_lines(path)) for path in files]
        if args.anchors is not None:
            keys = load_public_keys(_anchor_key_files(args))
            if not keys:
                return _verify_usage("--anchors needs the anchor key: --anchor-key PEM, or --config idgate.yaml")
            tokens, anchor_notes = anchor_lines(args.anchors, clients, instance)
            notes = tuple(dict.fromkeys((*notes, *anchor_notes)))
            anchored = verify_anchored(segments, tokens, keys, drop_copies=remote, progress=progress)
            report = anchored.chain
        else:
            report = verify_segments(segments, progress, drop_copies=True) if remote else verify_files(files, progress)
    except SourceError as exc:
        return _verify_usage(str(exc))
    finally:
        if progress is not None:
            progress.clear()
    for problem in (*notes, *report.problems, *(anchored.problems if anchored else ())):
        complain(problem)
    ok = report.ok and (anchored is None or anchored.ok) and not notes
    since = f", from seq {report.starts_after + 1} (earlier segments deleted by retention)" \
        if report.starts_after else ""
    copies = f", {report.copies} copies of resent records skipped" if report.copies else ""
    print(f"audit verify: {'ok' if ok else 'FAILED'}: {report.records} record(s) in {report.files} "
          f"segment(s){since}{copies}{_anchors_summary(anchored)}")
    return EXIT_OK if ok else EXIT_FAILED


def _anchor_key_files(args: argparse.Namespace) -> list[Path]:
    if args.anchor_key or args.config is None:
        return list(args.anchor_key)
    from proxy.config import load_config

    shipping = load_config(args.config).audit.shipping
    return [shipping.anchors.key_file] if shipping is not None and shipping.anchors.key_file else []


def _anchors_summary(anchored: Any) -> str:
    if anchored is None:
        return ""
    if not anchored.anchors:
        return "; no anchor"
    newest = anchored.anchors[-1]
    return (f"; {len(anchored.anchors)} anchor(s), the newest (signed {newest.time}) vouches for seq {newest.seq}")


def _verify_usage(message: str) -> int:
    complain(f"idgate audit verify: {message}")
    return EXIT_USAGE


# --- audit query ------------------------------------------------------------------------------------------

QUERY_HELP = """Records that answer a question, from local segment files or directories, s3://BUCKET/PREFIX
or cloudwatch://GROUP/STREAM (cloudwatch://GROUP/ for every stream).  A decision and its outcome (one
request_id) are judged together: identity, decision and route are on the decision; rule, table, key and
time on either.  Exit status: 0 with matches, 1 without, 2 for a bad option or source."""


def _add_query_parser(audit_sub: Any) -> None:
    query = audit_sub.add_parser("query", help="find audit records by identity, rule, table, key, time, ...",
                                 description=QUERY_HELP)
    query.add_argument("sources", nargs="+", metavar="SOURCE")
    query.add_argument("--config", "-c", type=Path, help="idgate.yaml: for --route, and for --key on HMAC'd keys")
    query.add_argument("--issuer", help="the identity's issuer (exact)")
    query.add_argument("--subject", help="the identity's subject (a glob: 'svc-etl-*')")
    query.add_argument("--rule", help="a rule id that decided the request")
    query.add_argument("--decision", choices=("allow", "deny"))
    query.add_argument("--surface", choices=[s.value for s in Surface])
    query.add_argument("--route", help="a route name of the configuration (-c): the reverse proxy's requests to it")
    query.add_argument("--table", help="a DynamoDB table touched, returned from or written to, or granted by a vend")
    query.add_argument("--key", help="a DynamoDB partition key value (with -c, also found as its redaction HMAC)")
    query.add_argument("--since", help="ISO 8601 date or timestamp (UTC unless given), or a duration ago: 24h, 7d")
    query.add_argument("--until", help="as --since; records before it")
    query.add_argument("--request-id")
    query.add_argument("--event", choices=("decision", "outcome", "session"),
                       help="show only these records (session: browser logins, refreshes, logouts)")
    query.add_argument("--session", help="a browser session, as its records name it: what it did and its life")
    query.add_argument("--format", choices=("table", "jsonl"), default="table",
                       help="table (the default, wherever stdout goes) or jsonl: the stored lines, exactly")


def cmd_query(args: argparse.Namespace) -> int:
    from proxy.audit.query import Filters, key_forms, parse_when
    from proxy.audit.search import Search
    from proxy.audit.table import TableWriter

    now = datetime.now(UTC)
    try:
        since, until = (parse_when(v, now) if v else None for v in (args.since, args.until))
    except ValueError as exc:
        return _usage(f"--since/--until: {exc}")
    config = _query_config(args)
    if isinstance(config, int):
        return config
    keys = key_forms(args.key, _redaction_key(config)) if args.key is not None else frozenset()
    filters = Filters(issuer=args.issuer, subject=args.subject, rule=args.rule, decision=args.decision,
                      surface=args.surface, route=_route_matcher(config, args.route) if args.route else None,
                      table=args.table, keys=keys, since=since, until=until, request_id=args.request_id,
                      event=args.event, session=args.session)
    search = Search(filters, complain)
    writer = TableWriter(sys.stdout, {form: args.key for form in keys}) if args.format == "table" else None
    try:
        status = _answer(args.sources, search, writer)
        sys.stdout.flush()
    except BrokenPipeError:          # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return status


def _answer(specs: list[str], search: Search, writer: TableWriter | None) -> int:
    """Print what the sources hold that the search finds: every spec is listed before anything is shown."""
    from proxy.audit.sources import SourceError, boto3_clients, open_source

    try:
        clients = boto3_clients()
        sources = [open_source(spec, clients) for spec in specs]
        for source in sources:
            for note in source.notes:
                complain(f"warning: {note}")
            if source.ignored:
                complain(f"{source.spec}: {len(source.ignored)} object(s) neither segments nor anchors, ignored "
                          f"(the first: {source.ignored[0]})")
        for found in search.run(chain for source in sources for chain in source.chains):
            if writer is not None:
                writer.add(found)
            else:
                sys.stdout.buffer.write(found.line + b"\n")
    except SourceError as exc:
        if writer is not None:
            writer.flush()
        complain(str(exc))
        return EXIT_USAGE
    if writer is not None:
        writer.flush()
    _summarize(search)
    return EXIT_OK if search.tally.shown else EXIT_FAILED


def _usage(message: str) -> int:
    complain(f"idgate audit query: {message}")
    return EXIT_USAGE


def complain(message: str) -> None:
    """One line on stderr; what a record or a source name put in it cannot act on the terminal."""
    from proxy.audit.table import escape

    text = escape(message)
    print(text if len(text) <= 1000 else text[:997] + "...", file=sys.stderr)


def _query_config(args: argparse.Namespace) -> Config | None | int:
    """The configuration -c names (None without it), or the exit status of a usage error."""
    from proxy.config import load_config

    if args.config is None:
        if args.route:
            return _usage("--route needs the configuration (-c idgate.yaml): records hold the host and path, "
                          "the configuration which route they go to")
        return None
    config = load_config(args.config)          # a ConfigError is reported by proxy.cli.main (exit 2)
    if args.route and all(route.name != args.route for route in config.routes):
        return _usage(f"--route: no route named {args.route!r} in {args.config}")
    return config


def _redaction_key(config: Config | None) -> bytes | None:
    """The gateway key ring's redaction key, when the configuration has a ring: records written with
    aws.gateway.redact_keys hold partition keys as HMACs under it."""
    from proxy.aws.gateway_keys import load_key_ring
    from proxy.config.schema import ENV_GATEWAY_KEYS

    if config is None or (config.aws.gateway.key_file is None and ENV_GATEWAY_KEYS not in os.environ):
        return None
    return load_key_ring(config.aws.gateway.key_file, os.environ).redaction_key


def _route_matcher(config: Config | None, name: str) -> RouteMatcher:
    from proxy.core.errors import NotFound
    from proxy.edges._routes import RouteTable

    assert config is not None      # _query_config asked for it
    table = RouteTable(config.routes)

    def routed(host: str, path: str) -> bool:
        try:
            return table.match(host, path).name == name
        except NotFound:
            return False

    return routed


def _summarize(search: Search) -> None:
    tally = search.tally
    extras: Mapping[str, int] = {
        "malformed line(s) skipped": tally.malformed, "edited record(s) skipped": tally.edited,
        "duplicate(s) dropped": tally.duplicates, "conflict(s)": tally.conflicts,
        "repeated seq(s) too far back to compare, not shown": tally.uncompared}
    notes = "".join(f", {count} {what}" for what, count in extras.items() if count)
    print(f"audit query: {tally.shown} record(s) shown of {tally.records} read from {tally.chains} chain(s){notes}",
          file=sys.stderr)
    if tally.redacted:
        print(f"audit query: {tally.redacted} record(s) hold partition keys as HMACs (aws.gateway.redact_keys): "
              "give -c idgate.yaml so that --key finds them", file=sys.stderr)
