"""The `tracing:` section's checks: what OpenTelemetry would take but idgate should not (an unbounded
resource, a key too short to hide who a pseudonym stands for, a ratio outside 0..1), reported at its line."""

from __future__ import annotations

import os

from proxy.config.decoder import Spot
from proxy.config.schema import MIN_PSEUDONYM_KEY_BYTES, TracingConfig
from proxy.config.checks import cidr_problem, http_url_problem, modules_installed

OTEL_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
MAX_RESOURCE_ATTRIBUTES = 64
MAX_NAME_CHARS = 255
MAX_VALUE_CHARS = 1024
MAX_ROLES = 64
MAX_QUEUE = 1_000_000


def check_tracing(tracing: TracingConfig, spot: Spot) -> TracingConfig:
    if why := http_url_problem(tracing.endpoint, bare=False):
        spot.report(why, "endpoint")
    if not 0 <= tracing.sampling_ratio <= 1:
        spot.report("must be between 0 and 1", "sampling_ratio")
    if len(tracing.service_name) > MAX_NAME_CHARS or not tracing.service_name.isprintable():
        spot.report(f"must be printable and at most {MAX_NAME_CHARS} characters", "service_name")
    _check_resource(tracing, spot)
    key_file = tracing.pseudonym_key_file
    if key_file is not None and not spot.decoder.offline and not spot.report_unreadable(key_file, "pseudonym_key_file"):
        if os.stat(key_file).st_size < MIN_PSEUDONYM_KEY_BYTES:
            spot.report(f"must hold at least {MIN_PSEUDONYM_KEY_BYTES} bytes of key (e.g. head -c 32 /dev/urandom)",
                        "pseudonym_key_file")
    for i, cidr in enumerate(tracing.trusted_peers or ()):
        if why := cidr_problem(cidr):
            spot.report(why, "trusted_peers", i)
    if not 0 <= tracing.max_roles <= MAX_ROLES:
        spot.report(f"must be between 0 and {MAX_ROLES}", "max_roles")
    if not 0 < tracing.max_queue_size <= MAX_QUEUE:
        spot.report(f"must be greater than 0 and at most {MAX_QUEUE}", "max_queue_size")
    if not 0 < tracing.export_timeout <= 60:
        spot.report("must be greater than 0 and at most 60 seconds", "export_timeout")
    if tracing.enabled and not modules_installed(*OTEL_MODULES):
        spot.report("tracing needs the otel extra: pip install 'idgate[otel]'")
    return tracing


def _check_resource(tracing: TracingConfig, spot: Spot) -> None:
    attributes = tracing.resource_attributes
    if len(attributes) > MAX_RESOURCE_ATTRIBUTES:
        spot.report(f"at most {MAX_RESOURCE_ATTRIBUTES} attributes", "resource_attributes")
    for name, value in attributes.items():
        if name == "service.name":
            spot.report("set service_name instead of resource_attributes.service.name", "resource_attributes")
        elif len(name) > MAX_NAME_CHARS or len(value) > MAX_VALUE_CHARS or not (name + value).isprintable():
            spot.report(f"'{name[:40]}': names of at most {MAX_NAME_CHARS} and values of at most {MAX_VALUE_CHARS} "
                        "printable characters", "resource_attributes")
