"""LoopCounter and LoopHistogram expose exactly what prometheus-client's Counter and Histogram would."""

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from proxy.metrics import LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {(s.name, tuple(sorted(s.labels.items())), round(s.value, 9))
            for family in registry.collect() for s in family.samples if not s.name.endswith("_created")}


def test_histogram_matches_prometheus_client_including_values_on_a_bound():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("x_seconds", "doc", ["route"], buckets=BUCKETS, registry=ours)
    reference = Histogram("x_seconds", "doc", ["route"], buckets=BUCKETS, registry=theirs)
    rng = random.Random(7)
    values = [*BUCKETS, 0.0, 5.0, *(rng.uniform(0, 2) for _ in range(500))]   # bounds are inclusive (le)
    for value in values:
        route = rng.choice(["a", "b"])
        loop.labels(route).observe(value)
        reference.labels(route).observe(value)
    assert _samples(ours) == _samples(theirs)


def test_counter_matches_prometheus_client_labelled_and_plain():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labelled = (LoopCounter("req_total", "doc", ["surface"], registry=ours),
                Counter("req_total", "doc", ["surface"], registry=theirs))
    plain = (LoopCounter("bytes_total", "doc", registry=ours), Counter("bytes_total", "doc", registry=theirs))
    for metric in labelled:
        metric.labels("proxy").inc()
        metric.labels("proxy").inc(2)
        metric.labels("forward_auth").inc()
    for metric in plain:
        metric.inc(100)
    assert _samples(ours) == _samples(theirs)


def test_wrong_label_count_is_refused():
    counter = LoopCounter("c_total", "doc", ["a", "b"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        counter.labels("only-one")
