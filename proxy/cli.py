"""The `idgate` command: serve, check-config, check, test, diff and suggest (cli_policy.py), audit
(cli_audit.py), gateway-keys, token (dev), demo."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from proxy import cli_audit, cli_policy, logs
from proxy.config import Config, load_config
from proxy.core.errors import (
    AuthenticationError, ConfigError, DependencyError, IdgateError, StartupError,
)
from proxy.core.model import Identity
from proxy.core.reasons import Reason
from proxy.policy.engine import CompiledPolicy

if TYPE_CHECKING:
    from proxy.worker_state import WorkerSeat

log = logging.getLogger("idgate")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, default=Path("idgate.yaml"),
                        help="path to idgate.yaml (default: %(default)s)")


def _loop_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="event loop: uvloop when it is installed (auto, the default), or force one")


def installed_version() -> str:
    """The version pip installed (pyproject.toml's), so a bug report names the build that ran."""
    try:
        return importlib.metadata.version("idgate")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: run from a source tree)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idgate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"idgate {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    _config_arg(serve)
    serve.add_argument("--log-level", default="info", type=str.lower, choices=logs.LEVELS,
                       help="the least severe records logged: %(choices)s (default: %(default)s)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the listeners (SO_REUSEPORT)")
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-state-fd", type=int, default=None, help=argparse.SUPPRESS)
    _loop_arg(serve)
    check_config = sub.add_parser("check-config", help="validate idgate.yaml and the policy files")
    _config_arg(check_config)
    check_config.add_argument("--offline", action="store_true",
                              help="lint away from the machine that serves: do not open the key, TLS, JWKS and "
                                   "audit files the config names, nor require the secrets the environment "
                                   "supplies at runtime")
    check_config.add_argument("--policies", type=Path, default=None, metavar="DIR",
                              help="check these policy files instead of policies_dir (e.g. a checkout's copy)")
    check = sub.add_parser("check", help="explain the decision for one request, without a server")
    _config_arg(check)
    check.add_argument("--token-claims", required=True, help="JSON claims of the (already verified) token")
    check.add_argument("--method", default="GET")
    what = check.add_mutually_exclusive_group(required=True)
    what.add_argument("--url", help="e.g. http://orders.internal/v1/orders/7")
    what.add_argument("--dynamodb", metavar="OPERATION", help="a DynamoDB gateway call, e.g. GetItem (with --body)")
    what.add_argument("--aws", action="store_true",
                      help="only the AWS part: the roles and session policies a worker with these claims would get")
    check.add_argument("--body", help="the DynamoDB call's JSON body (--dynamodb)")
    check.add_argument("--key-schema", action="append", default=[], metavar="TABLE[/INDEX]=PK[,SK]",
                       help="a table's (or index's) key attributes, as DescribeTable would give them (--dynamodb)")
    check.add_argument("--role", help="the role of the caller's credentials, when several are granted (--dynamodb)")
    cli_policy.add_parser(sub)
    cli_audit.add_parser(sub)
    keys = sub.add_parser("gateway-keys", help="print a new DynamoDB gateway key ring (JSON) to stdout")
    keys.add_argument("--key-id", default="k1", help="the id of its one (active) key: [A-Za-z0-9]{1,16}")
    token = sub.add_parser("token", help="(dev) mint an access token from a local EC key")
    token.add_argument("--key", type=Path, required=True, help="PEM EC P-256 private key")
    token.add_argument("--issuer", required=True)
    token.add_argument("--audience", required=True)
    token.add_argument("--subject", required=True)
    token.add_argument("--groups", default="", help="comma-separated")
    token.add_argument("--lifetime", type=int, default=900)
    demo = sub.add_parser("demo", help="run a loopback demo: dev issuer, echo upstream and idgate")
    demo.add_argument("--workdir", type=Path, default=Path(".demo"))
    demo.add_argument("--policies", type=Path, default=Path("policies"))
    _loop_arg(demo)
    return parser


def _report_config_error(err: ConfigError) -> int:
    print(f"idgate: configuration invalid ({len(err.problems)} problem(s)):", file=sys.stderr)
    for problem in err.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_USAGE


def cmd_check_config(args: argparse.Namespace) -> int:
    from proxy.policy.store import compile_directory

    config = load_config(args.config, offline=args.offline)
    policies_dir = args.policies or config.policies_dir
    if args.offline and args.policies is None and not policies_dir.is_dir():
        policy = None   # a runtime path (e.g. /etc/idgate/policies) that this machine does not have
    else:
        policy = compile_directory(policies_dir)
    if not args.offline:
        _check_runtime_keys(config)
    if policy is None:
        checked = f"policies not checked: {policies_dir} is not here (give --policies DIR)"
    else:
        checked = f"{len(policy.rules)} rule(s) from {policies_dir}"
        for rule in policy.rules:
            unknown = sorted(set(rule.who.issuers) - {issuer.issuer for issuer in config.issuers})
            if unknown:
                print(f"idgate: warning: {rule.file}:{rule.line}: rule '{rule.id}' names issuer(s) the config "
                      f"does not trust ({', '.join(unknown)}): it can never match", file=sys.stderr)
    print(f"{args.config}: ok{' (offline)' if args.offline else ''} ({len(config.issuers)} issuer(s), "
          f"{len(config.routes)} route(s), {checked})")
    return EXIT_OK


def _check_runtime_keys(config: Config) -> None:
    """Load the keys the server will load, so that a file that is readable but no key fails here."""
    if config.aws.gateway.enabled:
        import os

        from proxy.aws.gateway import load_gateway_ring

        load_gateway_ring(config.aws.gateway, os.environ)   # its problems are the config's
    shipping = config.audit.shipping
    if shipping is not None and shipping.anchors.key_file is not None:
        from proxy.keys import load_p256_private_key

        load_p256_private_key(shipping.anchors.key_file, "audit anchor key")


def explained_identity(config: Config, claims: dict[str, Any]) -> Identity:
    """The Identity the server would build from these (already verified) claims: the issuer selected by
    `iss` and the server's own subject, client and groups mapping.  Time and audience are not checked:
    `check` explains the policy for a token, whatever its validity window."""
    from proxy.oidc.claims import mapped_identity

    issuer = next((i for i in config.issuers if i.issuer == claims.get("iss")), None)
    if issuer is None:
        raise AuthenticationError("the token's iss is not a configured issuer", reason=Reason.UNKNOWN_ISSUER)
    aud = claims.get("aud")
    audience = (aud,) if isinstance(aud, str) else tuple(a for a in aud if isinstance(a, str)) if isinstance(aud, list) else ()
    exp = claims.get("exp")
    expires_at = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else time.time() + 300
    return mapped_identity(claims, issuer, audience, expires_at)


def _print_refusal(err: IdgateError) -> int:
    print(json.dumps({"decision": "deny", "rule": None, "reasons": [err.reason], "message": err.message}, indent=2))
    return EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    from proxy.core.paths import normalize_path, split_target
    from proxy.policy.store import compile_directory

    config = load_config(args.config)
    policy = compile_directory(config.policies_dir)
    try:
        claims = json.loads(args.token_claims)
    except json.JSONDecodeError as exc:
        print(f"idgate: --token-claims is not JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(claims, dict):
        print("idgate: --token-claims must be a JSON object", file=sys.stderr)
        return EXIT_USAGE
    if args.dynamodb is not None:
        return _check_dynamodb(args, config, policy, claims)
    if args.aws:
        return _check_aws(config, policy, claims)
    url = urlsplit(args.url)
    target = url.path or "/"
    if url.query:
        target += "?" + url.query
    try:
        identity = explained_identity(config, claims)
        raw_path, _ = split_target(target)
        path = normalize_path(raw_path)
    except IdgateError as err:
        return _print_refusal(err)
    explanation = policy.explain_http(identity, args.method.upper(), (url.hostname or "").lower(), path)
    decision = explanation.decision
    rule = policy.rule(decision.rule_id) if decision.rule_id else None
    print(json.dumps({
        "decision": "allow" if decision.allowed else "deny",
        "summary": explanation.summary(),
        "rule": decision.rule_id,
        "rule_source": f"{rule.file}:{rule.line}" if rule else None,
        "reasons": list(decision.reasons),
        "matching_deny_rules": list(explanation.deny_rules),
        "matching_allow_rules": list(explanation.allow_rules),
        "rules_for_other_identities": list(explanation.other_identities),
        "request": {"method": args.method.upper(), "host": url.hostname, "path": path},
        "identity": identity.audit_view(),
        **({"aws": aws} if (aws := aws_explanation(config, policy, identity)) else {}),
    }, indent=2))
    return EXIT_OK if decision.allowed else EXIT_FAILED


def _key_schemas(specs: list[str]) -> dict[str, Any]:
    """`--key-schema orders=pk,sk --key-schema orders/by-status=status` → KeySchema per table."""
    from proxy.aws.dynamodb.touches import KeySchema

    tables: dict[str, tuple[str, str | None]] = {}
    indexes: dict[str, dict[str, tuple[str, str | None]]] = {}
    for spec in specs:
        name, _, keys = spec.partition("=")
        parts = [k for k in keys.split(",") if k]
        if not name or not 1 <= len(parts) <= 2:
            raise ValueError(f"--key-schema {spec!r}: expected TABLE[/INDEX]=PK[,SK]")
        table, _, index = name.partition("/")
        pair = (parts[0], parts[1] if len(parts) == 2 else None)
        if index:
            indexes.setdefault(table, {})[index] = pair
        else:
            tables[table] = pair
    return {t: KeySchema(pk, sk, indexes.get(t, {})) for t, (pk, sk) in tables.items()}


def _check_dynamodb(args: argparse.Namespace, config: Config, policy: CompiledPolicy, claims: dict[str, Any]) -> int:
    """`idgate check --dynamodb OP --body JSON`: the touches the gateway would find and its verdict."""
    from proxy.aws.dynamodb import calls
    from proxy.aws.dynamodb.touches import touches
    from proxy.aws.gateway import table_namer
    from proxy.policy.dynamodb import authorize, table_grants
    from proxy.policy.session_policy import choose_role

    try:
        schemas = _key_schemas(args.key_schema)
    except ValueError as exc:
        print(f"idgate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        identity = explained_identity(config, claims)
        choice = choose_role(policy.rules_for_identity(identity), args.role)
        namer = table_namer(choice.role_arn, config.aws.region)
        call = calls.decode(calls.operation(calls.TARGET_PREFIX + args.dynamodb), (args.body or "{}").encode(), namer)
        missing = [t for t in call.tables if t not in schemas]
        if missing:
            print(f"idgate: give the key schema of {', '.join(missing)} with --key-schema TABLE=PK[,SK]", file=sys.stderr)
            return EXIT_USAGE
        found = touches(call, schemas, namer)
        verdict = authorize(found, table_grants(choice, identity.claims))
    except IdgateError as err:
        return _print_refusal(err)
    print(json.dumps({
        "decision": "allow" if verdict.allowed else "deny",
        "reasons": [verdict.reason], "role_arn": choice.role_arn, "gateway": choice.gateway,
        "touches": [{"table": t.table, "index": t.index, "action": t.action, "keys": list(t.keys),
                     "attributes": "*" if t.attributes is None else sorted(t.attributes),
                     "whole_item": t.whole_item, "rule": rule} for t, rule in zip(found, verdict.rules, strict=True)],
        "denied_touch": verdict.denied,
        "identity": identity.audit_view(),
    }, indent=2))
    return EXIT_OK if verdict.allowed else EXIT_FAILED


def cmd_gateway_keys(args: argparse.Namespace) -> int:
    from proxy.aws.gateway_keys import new_key_ring_text

    try:
        print(new_key_ring_text(args.key_id))
    except ValueError as exc:
        print(f"idgate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _check_aws(config: Config, policy: CompiledPolicy, claims: dict[str, Any]) -> int:
    """What the credential broker (or gateway) would vend, with no HTTP request to judge: allow when at
    least one role would be granted."""
    try:
        identity = explained_identity(config, claims)
    except IdgateError as err:
        return _print_refusal(err)
    roles = aws_explanation(config, policy, identity)
    granted = any("denied" not in role for role in roles)
    print(json.dumps({"decision": "allow" if granted else "deny", "identity": identity.audit_view(), "aws": roles},
                     indent=2))
    return EXIT_OK if granted else EXIT_FAILED


def aws_explanation(config: Config, policy: CompiledPolicy, identity: Identity) -> list[dict[str, Any]]:
    """The roles the credential broker would let this identity take, each with the exact session policy
    it would send to STS (or why it would refuse)."""
    from proxy.policy.session_policy import render_session_policy, role_choices

    roles = []
    for choice in role_choices(policy.rules_for_identity(identity)):
        entry: dict[str, Any] = {
            "role": choice.name, "role_arn": choice.role_arn, "rules": list(choice.rule_ids),
            "web_identity": choice.web_identity, "gateway": choice.gateway,
            "duration": choice.duration or config.aws.default_duration,
        }
        try:
            rendered = render_session_policy(choice, identity.claims, config.aws.region)
        except IdgateError as err:
            entry["denied"] = {"reason": err.reason, "message": err.message}
        else:
            entry.update(session_policy=json.loads(rendered.document), session_policy_sha256=rendered.sha256,
                         session_policy_chars=len(rendered.document))
        roles.append(entry)
    return roles


def cmd_token(args: argparse.Namespace) -> int:
    from proxy.assertion import load_signing_key
    from proxy.dev.issuer import DemoIdentity, DevIssuer

    groups = tuple(g for g in args.groups.split(",") if g)
    issuer = DevIssuer(args.issuer, args.audience, key=load_signing_key(args.key))
    print(issuer.mint(DemoIdentity(args.subject, groups), lifetime=args.lifetime))
    return EXIT_OK


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _chosen_loop(choice: str) -> LoopFactory | None:
    """The event loop `--loop` asks for.  `auto` takes uvloop when it is installed (`idgate[fast]`: less CPU
    per request) and asyncio's own loop otherwise; a missing uvloop asked for by name is said in one line."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "auto":
            return asyncio.new_event_loop
        print("idgate: --loop uvloop: uvloop cannot be imported (install it with pip install 'idgate[fast]')",
              file=sys.stderr)
        return None
    return uvloop.new_event_loop


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def _run(factory: LoopFactory, main: Coroutine[Any, Any, None]) -> int:
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)
    return EXIT_OK


async def _serve(config: Config, *, reuse_port: bool = False, seat: WorkerSeat | None = None) -> None:
    from proxy.services import running_services
    from proxy.app.listeners import Listeners

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with running_services(config, workers=seat) as services:
        loop.add_signal_handler(signal.SIGHUP, services.request_reload)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        running_loop = _loop_name(loop)
        services.metrics.event_loop.labels(loop=running_loop).set(1)
        listeners = Listeners(services)
        await listeners.start(reuse_port=reuse_port)
        log.info("idgate serving", extra={"listen": f"{config.listen.host}:{listeners.main_port}",
                                          "admin": f"{config.admin.host}:{listeners.admin_port}",
                                          "loop": running_loop})
        if seat is not None:
            seat.mark_serving()
        await stop.wait()
        log.info("idgate stopping")
        if seat is not None:
            seat.unmark()       # draining: readiness says so while the listeners close
        await listeners.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    config = load_config(args.config)
    factory = _chosen_loop(args.loop)
    if factory is None:
        return EXIT_USAGE
    if args.worker_index is not None:
        from proxy.app.supervisor import worker_config

        seat = None if args.worker_state_fd is None else _worker_seat(args.worker_state_fd, args.worker_index)
        return _run(factory, _serve(worker_config(config, args.worker_index), reuse_port=True, seat=seat))
    if args.workers > 1:
        from proxy.app.supervisor import run_workers

        return run_workers(config, args.config, args.workers, ["--log-level", args.log_level, "--loop", args.loop])
    return _run(factory, _serve(config))


def _worker_seat(fd: int, index: int) -> WorkerSeat:
    from proxy.worker_state import WorkerSeat, WorkerStateError, WorkerTable

    try:
        table = WorkerTable.attach(fd)
        table.slot(index)
    except WorkerStateError as exc:
        raise StartupError(str(exc)) from exc
    return WorkerSeat(table, index)


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.dev.demo import run_demo

    logs.configure("warning")
    factory = _chosen_loop(args.loop)
    return EXIT_USAGE if factory is None else _run(factory, run_demo(args.workdir, args.policies))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {
        "serve": cmd_serve, "check-config": cmd_check_config, "check": cmd_check,
        "test": cli_policy.cmd_test, "diff": cli_policy.cmd_diff, "suggest": cli_policy.cmd_suggest, "audit": cli_audit.run, "token": cmd_token, "demo": cmd_demo, "gateway-keys": cmd_gateway_keys,
    }
    try:
        return commands[args.command](args)
    except ConfigError as err:
        return _report_config_error(err)
    except (StartupError, DependencyError) as err:   # a port taken, the audit file held, a service away
        print(f"idgate: {err.message}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
