"""start_sessions picks the store the config names (in memory, SQLite, DynamoDB), and the config checks
refuse a store that could not start."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from proxy.config import check_config, load_config
from proxy.core.errors import ConfigError
from proxy.sessions import start_sessions
from proxy.sessions.dynamodb_store import DynamoDbStore
from proxy.sessions.sqlite_store import SqliteStore
from proxy.sessions.store import MemoryStore
from tests.harness.login import write_login_config
from tests.harness.oidc_provider import WebClient

OP = SimpleNamespace(issuer="http://127.0.0.1:9")
CLIENT = WebClient("rp", "secret", "client_secret_basic", ("http://127.0.0.1:8443/.idgate/callback",))


def config_with(tmp_path: Path, **store: Any) -> Path:
    return write_login_config(tmp_path, OP, CLIENT, 8443, 8080, **({"store": store} if store else {}))  # type: ignore[arg-type]


async def started(path: Path, workers: int = 1) -> Any:
    async with aiohttp.ClientSession() as http:
        sessions = start_sessions(load_config(path), http, verifier=None, environ={}, workers=workers)  # type: ignore[arg-type]
        assert sessions is not None
        store = sessions._store                  # noqa: SLF001 - which store was built is the point
        await sessions.close()
        return store


async def test_embedded_without_a_path_is_in_memory_and_serves_one_worker_only(tmp_path):
    assert isinstance(await started(config_with(tmp_path)), MemoryStore)
    with pytest.raises(ConfigError, match="login.store.path"):
        await started(config_with(tmp_path), workers=2)


async def test_embedded_with_a_path_is_the_sqlite_file_for_any_number_of_workers(tmp_path):
    path = tmp_path / "sessions.db"
    assert isinstance(await started(config_with(tmp_path, path=str(path)), workers=4), SqliteStore)
    assert path.is_file()


async def test_dynamodb_takes_the_aws_region_unless_it_has_its_own(tmp_path):
    store = await started(config_with(tmp_path, type="dynamodb", table="idgate-sessions"))
    assert isinstance(store, DynamoDbStore) and store._client.meta.region_name == "us-east-1"   # noqa: SLF001
    store = await started(config_with(tmp_path, type="dynamodb", table="idgate-sessions", region="eu-west-1",
                                      endpoint="http://127.0.0.1:9"))
    assert store._client.meta.region_name == "eu-west-1"                                        # noqa: SLF001
    assert store._client.meta.endpoint_url == "http://127.0.0.1:9"                              # noqa: SLF001


async def test_dynamodb_without_an_endpoint_takes_botocores_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:7")
    store = await started(config_with(tmp_path, type="dynamodb", table="idgate-sessions"))
    assert store._client.meta.endpoint_url == "http://127.0.0.1:7"                              # noqa: SLF001


def test_a_sqlite_path_in_a_missing_directory_is_a_config_problem_except_offline(tmp_path):
    path = config_with(tmp_path, path=str(tmp_path / "missing" / "sessions.db"))
    [problem] = check_config(path)
    assert "login.store.path" in problem and "does not exist" in problem
    assert check_config(path, offline=True) == []
