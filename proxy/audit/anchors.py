"""Signed anchors: what makes a cut-off tail detectable.  The chain is unkeyed, so whoever can rewrite
the files can drop or recompute the newest records; an anchor, signed with a dedicated ES256 key and
stored in the sinks, vouches that record `seq` of `instance` had `hash` at `time`, and names the
signature of the anchor before it, so anchors too can be neither dropped nor reordered unseen.

An anchor is a compact JWS (header {"alg":"ES256","typ":"idgate-anchor+jws","kid":<RFC 7638
thumbprint>}) over the JSON payload {"instance","n","seq","hash","time","prev"}: n counts an
instance's anchors from 1, prev is the signature part of anchor n-1 ("" for n = 1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.audit.chain import ChainState, format_ts
from proxy.core import strict_json
from proxy.keys import public_jwk, thumbprint

ANCHOR_TYP = "idgate-anchor+jws"
MAX_ANCHOR_CHARS = 2048
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class AnchorError(ValueError):
    """A token that is not a valid anchor signed by a known key."""


@dataclass(frozen=True, slots=True)
class Anchor:
    instance: str
    number: int
    seq: int
    hash: str
    time: str
    prev: str
    token: str

    @property
    def signature(self) -> str:
        return self.token.rpartition(".")[2]


class AnchorSigner:
    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self.kid = thumbprint(public_jwk(key.public_key()))

    def sign(self, instance: str, number: int, state: ChainState, epoch: float, prev: str) -> Anchor:
        time = format_ts(epoch)
        payload = {"instance": instance, "n": number, "seq": state.seq, "hash": state.prev, "time": time, "prev": prev}
        token = jwt.api_jws.encode(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("ascii"), self._key, algorithm="ES256",
                                   headers={"typ": ANCHOR_TYP, "kid": self.kid})
        return Anchor(instance, number, state.seq, state.prev, time, prev, token)


def public_keys(keys: Iterable[ec.EllipticCurvePublicKey]) -> dict[str, ec.EllipticCurvePublicKey]:
    """Verification keys by kid."""
    return {thumbprint(public_jwk(key)): key for key in keys}


def read_anchor(token: str, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> Anchor:
    token = token.strip()
    if len(token) > MAX_ANCHOR_CHARS:
        raise AnchorError(f"longer than {MAX_ANCHOR_CHARS} characters")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise AnchorError(f"not a JWS ({exc})") from exc
    if header.get("typ") != ANCHOR_TYP or header.get("alg") != "ES256":
        raise AnchorError("not an idgate anchor (typ or alg)")
    key = keys.get(str(header.get("kid")))
    if key is None:
        raise AnchorError(f"signed by an unknown key (kid {str(header.get('kid'))[:64]!r})")
    try:
        payload = jwt.api_jws.decode(token, key, algorithms=["ES256"])
        fields = strict_json.loads(payload)
    except (jwt.InvalidTokenError, ValueError) as exc:
        raise AnchorError(f"bad signature or payload ({exc})") from exc
    if not isinstance(fields, dict):
        raise AnchorError("payload is not a JSON object")
    instance, number, seq, digest, time, prev = (fields.get(k) for k in ("instance", "n", "seq", "hash", "time", "prev"))
    if not (isinstance(instance, str) and _is_count(number) and _is_count(seq) and isinstance(digest, str)
            and _HEX64.match(digest) and isinstance(time, str) and isinstance(prev, str)):
        raise AnchorError("payload lacks instance, n, seq, hash, time or prev")
    assert isinstance(number, int) and isinstance(seq, int)
    return Anchor(instance, number, seq, digest, time, prev, token)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def anchor_chain_problems(anchors: Sequence[Anchor]) -> list[str]:
    """Anchors of one instance, in the order stored: numbered from 1 without a gap, each naming the
    signature of the one before, never vouching for an earlier seq than the one before."""
    problems: list[str] = []
    before: Anchor | None = None
    for anchor in anchors:
        if before is None:
            if anchor.number != 1 or anchor.prev:
                problems.append(f"anchor {anchor.number}: the first stored anchor is not anchor 1: anchors "
                                f"1..{anchor.number - 1} are missing")
        elif anchor.number != before.number + 1:
            problems.append(f"anchor {anchor.number} follows anchor {before.number}: anchors are missing or "
                            "reordered")
        elif anchor.prev != before.signature:
            problems.append(f"anchor {anchor.number} does not name anchor {before.number}'s signature: "
                            "an anchor was replaced")
        elif anchor.seq < before.seq:
            problems.append(f"anchor {anchor.number} vouches for seq {anchor.seq}, before anchor "
                            f"{before.number}'s seq {before.seq}")
        before = anchor
    return problems


def record_problems(anchors: Sequence[Anchor], hashes: Mapping[int, str], first: int, last: int) -> list[str]:
    """Compare the records' hashes at anchored seqs (`hashes`, from records first..last that verified
    as a chain) with what the anchors vouch for: a rewritten record, or a tail cut before the newest
    anchored seq (the range that is missing, said exactly)."""
    problems: list[str] = []
    for anchor in anchors:
        if anchor.seq < first:
            continue                     # before the records at hand (deleted by retention, or not fetched)
        if anchor.seq > last:
            continue
        if hashes.get(anchor.seq) != anchor.hash:
            problems.append(f"record seq {anchor.seq} is not the record anchor {anchor.number} signed at "
                            f"{anchor.time}: records up to seq {anchor.seq} were rewritten")
    newest = max(anchors, key=lambda a: a.seq, default=None)
    if newest is not None and newest.seq > last:
        missing = f"{last + 1}..{newest.seq}" if newest.seq > last + 1 else f"{newest.seq}"
        problems.append(f"records seq {missing} are missing: the tail was cut (anchor {newest.number}, signed "
                        f"at {newest.time}, vouches for seq {newest.seq}; the records end at seq {last})")
    return problems
