from tests.harness.stack import make_stack, stack  # noqa: F401  (fixtures)
