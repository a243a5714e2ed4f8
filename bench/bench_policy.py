"""Benchmark: policy decisions against 10,000 generated rules, and request-path normalization.
Prints p50/p99 per call in µs and writes bench/results/policy.json.

Run: .venv/bin/python -m bench.bench_policy [--rules 10000] [--requests 50000] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

from proxy.core.model import Identity
from proxy.core.paths import normalize_path
from proxy.policy.engine import CompiledPolicy
from proxy.policy.rules import Effect, HttpGrant, Rule, Who

RESULTS = Path(__file__).resolve().parent / "results" / "policy.json"
ISSUERS = ("https://issuer-a.test", "https://issuer-b.test", "https://issuer-c.test")
RESOURCES = ("orders", "invoices", "users", "items", "reports", "events", "carts", "payments")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


class Mix:
    """A deployment shape: many hosts, teams of services, groups and tenants."""

    def __init__(self, rng: random.Random, hosts: int = 500, teams: int = 60, groups: int = 40) -> None:
        self.rng = rng
        self.hosts = [f"svc-{i}.zone{i % 20}.internal" for i in range(hosts)]
        self.teams = teams
        self.groups = groups

    def who(self) -> Who:
        rng = self.rng
        kind = rng.random()
        issuer = (rng.choice(ISSUERS),)
        if kind < 0.4:
            return Who(issuers=issuer, subjects=(f"svc-team{rng.randrange(self.teams)}-*",))
        if kind < 0.6:
            return Who(issuers=issuer, subjects=tuple(f"svc-team{rng.randrange(self.teams)}-{n}" for n in range(3)))
        if kind < 0.85:
            return Who(issuers=issuer, groups=(f"group-{rng.randrange(self.groups)}",))
        return Who(
            issuers=issuer,
            groups=(f"group-{rng.randrange(self.groups)}",),
            claims=MappingProxyType({"tenant": (f"tenant-{rng.randrange(10)}",)}),
        )

    def grant(self) -> HttpGrant:
        rng = self.rng
        roll = rng.random()
        if roll < 0.9:
            hosts = tuple(rng.sample(self.hosts, rng.randint(1, 3)))
        elif roll < 0.98:
            hosts = (f"*.zone{rng.randrange(20)}.internal",)
        else:
            hosts = ()
        methods = tuple(rng.sample(METHODS, rng.randint(1, 3))) if rng.random() < 0.8 else ()
        resource = rng.choice(RESOURCES)
        version = rng.choice(("v1", "v2"))
        shapes = (
            f"/{version}/{resource}",
            f"/{version}/{resource}/*",
            f"/{version}/{resource}/**",
            f"/{version}/{resource}/*/lines/*",
            f"/{version}/{resource}/*/history/**",
        )
        return HttpGrant(paths=tuple(rng.sample(shapes, rng.randint(1, 2))), hosts=hosts, methods=methods)

    def rules(self, count: int) -> list[Rule]:
        rules = [
            Rule(id="deny-admin", who=Who(any=True), effect=Effect.DENY, http=(HttpGrant(paths=("/admin/**",)),)),
            Rule(id="deny-internal", who=Who(any=True), effect=Effect.DENY,
                 http=(HttpGrant(paths=("/internal/**",)),)),
        ]
        while len(rules) < count:
            effect = Effect.DENY if self.rng.random() < 0.05 else Effect.ALLOW
            grants = tuple(self.grant() for _ in range(self.rng.randint(1, 2)))
            rules.append(Rule(id=f"rule-{len(rules)}", who=self.who(), effect=effect, http=grants))
        return rules

    def identity(self) -> Identity:
        rng = self.rng
        groups = tuple(f"group-{g}" for g in rng.sample(range(self.groups), rng.randint(0, 3)))
        return Identity(
            issuer=rng.choice(ISSUERS),
            subject=f"svc-team{rng.randrange(self.teams)}-{rng.randrange(5)}",
            audience=("api",),
            client_id=None,
            groups=groups,
            expires_at=0.0,
            claims=MappingProxyType({"tenant": f"tenant-{rng.randrange(10)}"}),
        )

    def request(self) -> tuple[str, str, str]:
        rng = self.rng
        resource = rng.choice(RESOURCES)
        version = rng.choice(("v1", "v2"))
        shape = rng.random()
        if shape < 0.25:
            path = f"/{version}/{resource}"
        elif shape < 0.6:
            path = f"/{version}/{resource}/{rng.randrange(10_000)}"
        elif shape < 0.8:
            path = f"/{version}/{resource}/{rng.randrange(10_000)}/lines/{rng.randrange(50)}"
        elif shape < 0.9:
            path = f"/{version}/{resource}/{rng.randrange(10_000)}/history/2026/11"
        else:
            path = rng.choice(("/admin/users", "/internal/debug", "/", "/healthz"))
        return rng.choice(METHODS[:4]), rng.choice(self.hosts), path


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0

    return {
        "p50_us": at(0.50),
        "p90_us": at(0.90),
        "p99_us": at(0.99),
        "max_us": ordered[-1] / 1000.0,
        "mean_us": statistics.fmean(ordered) / 1000.0,
        "calls": len(ordered),
    }


def time_calls(call: Callable[[Any], object], inputs: list[Any], warmup: int = 2000) -> list[int]:
    for item in inputs[:warmup]:
        call(item)
    clock = time.perf_counter_ns
    samples = []
    for item in inputs:
        start = clock()
        call(item)
        samples.append(clock() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    mix = Mix(random.Random(args.seed))
    rules = mix.rules(args.rules)
    started = time.perf_counter()
    policy = CompiledPolicy.compile(rules)
    compile_ms = (time.perf_counter() - started) * 1000.0

    identities = [mix.identity() for _ in range(500)]
    requests = [(mix.rng.choice(identities), *mix.request()) for _ in range(args.requests)]
    outcomes = Counter(d.reasons[0] for d in (policy.decide_http(*r) for r in requests))
    decide = time_calls(lambda r: policy.decide_http(*r), requests)

    plain = [mix.request()[2] for _ in range(args.requests)]
    tricky_shapes = ("/v1/%7Eorders/{n}", "/v1/a/../orders/{n}/", "//v1//orders/{n}", "/v1/caf%c3%a9/{n}?",
                     "/v1/orders/%2e%2e/items/{n}")
    tricky = [mix.rng.choice(tricky_shapes).format(n=n).rstrip("?") for n in range(args.requests)]
    normalize_fast = time_calls(normalize_path, plain)
    normalize_slow = time_calls(normalize_path, tricky)

    results = {
        "benchmark": "policy",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rules": len(rules),
        "compile_ms": round(compile_ms, 1),
        "outcomes": dict(outcomes),
        "decide_http": percentiles(decide),
        "normalize_path_plain": percentiles(normalize_fast),
        "normalize_path_escaped": percentiles(normalize_slow),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")

    print(f"{len(rules)} rules compiled in {compile_ms:.0f} ms; outcomes {dict(outcomes)}")
    print(f"{'operation':<26}{'p50 µs':>10}{'p90 µs':>10}{'p99 µs':>10}{'max µs':>10}")
    for name in ("decide_http", "normalize_path_plain", "normalize_path_escaped"):
        row = results[name]
        assert isinstance(row, dict)
        print(f"{name:<26}{row['p50_us']:>10.2f}{row['p90_us']:>10.2f}{row['p99_us']:>10.2f}{row['max_us']:>10.1f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
