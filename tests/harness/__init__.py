"""The real components the integration, security and Envoy tests run against (and the benchmarks reuse):
server processes, in-process idgate and upstreams, the OpenID Provider, moto, Envoy, and the stacks built of them."""
