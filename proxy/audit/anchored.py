"""`idgate audit verify --anchors`: one chain, read from local files or from a sink, checked as a chain
and against the signed anchors a sink holds for it.  The chain alone cannot show a tail that was cut
or recomputed; the anchors can, and say which records are missing.

Records come as chain.SegmentLines (local files, or a sources.Chain's segments); anchors as compact
JWS lines from a local anchors file or from a sink (an S3 instance folder's anchors/, a CloudWatch
stream's `.anchors` twin), verified with the anchor keys' public halves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.audit.anchors import Anchor, AnchorError, anchor_chain_problems, public_keys, read_anchor, record_problems
from proxy.audit.chain import Progress, SegmentLines, VerifyReport, verify_segments
from proxy.audit.sources import Chain, ClientFactory, SourceError, open_source


@dataclass(frozen=True, slots=True)
class AnchoredReport:
    chain: VerifyReport
    anchors: tuple[Anchor, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.problems


def load_public_keys(paths: Iterable[Path]) -> dict[str, ec.EllipticCurvePublicKey]:
    """The anchor keys by kid, from PEM files holding a public key or the private key itself."""
    keys: list[ec.EllipticCurvePublicKey] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        key: object
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            try:
                key = serialization.load_pem_private_key(data, password=None).public_key()
            except (ValueError, TypeError) as exc:
                raise SourceError(f"{path}: not a PEM EC P-256 key") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise SourceError(f"{path}: not an EC P-256 key")
        keys.append(key)
    return public_keys(keys)


def anchor_lines(spec: str, clients: ClientFactory, instance: str | None) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """(where, token) of every anchor stored at `spec`: a local anchors file, or a sink naming one
    instance (with several, the one called `instance`); and the signs of tampering the sink shows."""
    if "://" not in spec:
        path = Path(spec)
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        return [(f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()], ()
    source = open_source(spec, clients)
    chains = [c for c in source.chains if instance is None or c.name == instance]
    if len(chains) != 1:
        raise SourceError(f"{spec}: holds {'no' if not chains else 'several'} chains' anchors; name one instance "
                          "(s3://BUCKET/PREFIX/INSTANCE/ or cloudwatch://GROUP/INSTANCE)")
    (chain,) = chains
    return [(line.where, line.data.decode("ascii", "replace")) for segment in chain.anchors
            for line in segment.lines() if line.data], source.notes


def chain_segments(chain: Chain) -> list[SegmentLines]:
    return [(segment.name, ((line.where, line.data, (line.problem,) if line.problem else ()) for line in segment.lines()))
            for segment in chain.segments]


def verify_anchored(segments: Iterable[SegmentLines], tokens: Iterable[tuple[str, str]],
                    keys: Mapping[str, ec.EllipticCurvePublicKey], *, drop_copies: bool,
                    progress: Progress | None = None) -> AnchoredReport:
    problems: list[str] = []
    anchors: list[Anchor] = []
    seen: set[str] = set()
    for where, token in tokens:
        if token in seen:
            continue                     # a sink may hold an anchor twice after a crash: the same token
        seen.add(token)
        try:
            anchors.append(read_anchor(token, keys))
        except AnchorError as exc:
            problems.append(f"{where}: {exc}")
    anchors.sort(key=lambda a: a.number)
    instances = sorted({a.instance for a in anchors})
    if len(instances) > 1:
        problems.append(f"the anchors are of several instances ({', '.join(instances)}): give one instance's")
    anchored = {a.seq for a in anchors}
    hashes: dict[int, str] = {}
    span = [0, 0]                        # the first and last seq read

    def observe(seq: int, digest: str) -> None:
        span[0] = span[0] or seq
        span[1] = seq
        if seq in anchored:
            hashes[seq] = digest

    report = verify_segments(segments, progress, observe, drop_copies=drop_copies)
    if not anchors:
        problems.append("no valid anchor found: nothing vouches for the tail of these records")
    problems += anchor_chain_problems(anchors)
    problems += record_problems(anchors, hashes, span[0] or 1, span[1])
    return AnchoredReport(report, tuple(anchors), tuple(problems))
