"""idgate's benchmarks, run as modules from the repository root (`python -m bench.run`, or one of them as
`python -m bench.bench_proxy`), so they import proxy/ and the tests' harness like any other package."""
