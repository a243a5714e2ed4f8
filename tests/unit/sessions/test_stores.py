"""The SessionStore contract, run against every store: in memory, SQLite on a file, and DynamoDB on a real
moto server.  Where a store is shared (SQLite, DynamoDB), the second handle of a test is a separate
connection or client on the same file or table, as another worker or replica would have."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from proxy.core.errors import DependencyError, StartupError
from proxy.core.reasons import Reason
from proxy.sessions import dynamodb_store
from proxy.sessions.dynamodb_store import DynamoDbStore, table_definition
from proxy.sessions.sqlite_store import PURGE_SECONDS, SqliteStore
from proxy.sessions.store import MemoryStore, SessionStore, StoredSession
from tests.harness.moto import REGION, TEST_KEYS, MotoServer
from tests.harness.servers import refused_port

ISSUER, OTHER_ISSUER = "https://op.example", "https://other-op.example"
TABLE = "idgate-sessions"
START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Stores:
    one: SessionStore
    two: SessionStore           # the same sessions through another handle (the same one for MemoryStore)
    clock: Clock


def make_session(key: str = "a" * 64, *, issuer: str = ISSUER, subject: str = "alice", sid: str | None = "sid-1",
                 lifetime: float = 3600.0) -> StoredSession:
    return StoredSession(key=key, issuer=issuer, subject=subject, idp_session=sid, created_at=START,
                         expires_at=START + lifetime, seen_at=START, refresh_at=START + 300, valid_until=START + 600,
                         claims={"sub": subject, "groups": ["data-eng"], "n": 1.5, "nested": {"a": [1, None]}},
                         sealed_tokens="sealed-blob")


def open_dynamodb(moto: MotoServer, clock: Clock, endpoint: str | None = None) -> DynamoDbStore:
    return DynamoDbStore.open(TABLE, REGION, endpoint or moto.url, session=boto3.session.Session(**TEST_KEYS),
                              clock=clock)


@pytest.fixture
def dynamodb_table(moto: MotoServer) -> MotoServer:
    client = moto.client("dynamodb")
    client.create_table(**table_definition(TABLE))
    client.update_time_to_live(TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})
    return moto


@pytest.fixture(params=["memory", "sqlite", "dynamodb"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    clock = Clock()
    if request.param == "memory":
        memory = MemoryStore(clock=clock)
        yield Stores(memory, memory, clock)
        return
    opened: list[SessionStore]
    if request.param == "sqlite":
        opened = [await asyncio.to_thread(SqliteStore.open, tmp_path / "sessions.db", clock=clock) for _ in range(2)]
    else:
        moto = request.getfixturevalue("dynamodb_table")
        opened = [await asyncio.to_thread(open_dynamodb, moto, clock) for _ in range(2)]
    try:
        yield Stores(opened[0], opened[1], clock)
    finally:
        for store in opened:
            await store.close()


# -- create and get ---------------------------------------------------------------------------

async def test_a_created_session_reads_back_as_it_was_given(stores):
    session = make_session()
    await stores.one.create(session)
    for store in (stores.one, stores.two):
        got = await store.get(session.key)
        assert got == session and dict(got.claims) == dict(session.claims)
    assert await stores.one.get("b" * 64) is None


async def test_create_refuses_a_key_that_is_already_stored_and_keeps_the_first(stores):
    await stores.one.create(make_session())
    with pytest.raises(ValueError):
        await stores.two.create(make_session(subject="mallory"))
    assert (await stores.one.get(make_session().key)).subject == "alice"


async def test_a_stored_session_cannot_be_changed_through_the_claims_it_was_given(stores):
    session = make_session()
    await stores.one.create(session)
    session.claims["sub"] = "mallory"              # type: ignore[index]
    assert (await stores.one.get(session.key)).claims["sub"] == "alice"


async def test_an_expired_session_is_hidden_and_cannot_be_updated(stores):
    session = make_session(lifetime=60)
    await stores.one.create(session)
    stores.clock.now = session.expires_at - 0.5
    assert await stores.two.get(session.key) == session
    stores.clock.now = session.expires_at
    assert await stores.one.get(session.key) is None and await stores.two.get(session.key) is None
    assert await stores.one.update(session.advanced(seen_at=stores.clock.now)) is False


# -- update (compare-and-swap) ----------------------------------------------------------------

async def test_update_replaces_only_the_version_it_follows(stores):
    first = make_session()
    await stores.one.create(first)
    second = first.advanced(seen_at=START + 10, claims={"sub": "alice", "refreshed": True})
    assert await stores.two.update(second) is True
    assert await stores.one.get(first.key) == second and second.version == 2
    # A writer that still holds version 1 loses, whichever change it carries.
    assert await stores.one.update(first.advanced(seen_at=START + 20)) is False
    # Skipping a version is no better.
    assert await stores.one.update(second.advanced().advanced()) is False
    assert await stores.two.get(first.key) == second


async def test_two_updates_from_the_same_version_exactly_one_wins(stores):
    first = make_session()
    await stores.one.create(first)
    for round_ in range(5):
        current = await stores.one.get(first.key)
        mine = current.advanced(seen_at=START + round_, sealed_tokens=f"one-{round_}")
        theirs = current.advanced(seen_at=START + round_, sealed_tokens=f"two-{round_}")
        results = await asyncio.gather(stores.one.update(mine), stores.two.update(theirs))
        assert sorted(results) == [False, True]
        winner = mine if results[0] else theirs
        assert await stores.two.get(first.key) == winner


async def test_an_update_does_not_bring_back_a_deleted_session(stores):
    session = make_session()
    await stores.one.create(session)
    await stores.two.delete(session.key)
    assert await stores.one.update(session.advanced(seen_at=START + 1)) is False
    assert await stores.one.get(session.key) is None


# -- delete -----------------------------------------------------------------------------------

async def test_delete_ends_one_session_and_an_absent_one_is_nothing_to_do(stores):
    kept, ended = make_session("1" * 64), make_session("2" * 64)
    await stores.one.create(kept)
    await stores.one.create(ended)
    await stores.two.delete(ended.key)
    await stores.two.delete(ended.key)
    await stores.two.delete("f" * 64)
    assert await stores.one.get(ended.key) is None and await stores.one.get(kept.key) == kept


async def test_delete_matching_by_sid_ends_only_that_issuers_sessions_with_that_sid(stores):
    doomed = [make_session("1" * 64, sid="sid-x"), make_session("2" * 64, sid="sid-x", subject="alice")]
    kept = [make_session("3" * 64, sid="sid-y"),                          # the same user, another OP session
            make_session("4" * 64, sid="sid-x", issuer=OTHER_ISSUER),     # another issuer's same sid
            make_session("5" * 64, sid=None, subject="sid-x")]            # a subject that looks like the sid
    for session in doomed + kept:
        await stores.one.create(session)
    assert await stores.two.delete_matching(ISSUER, idp_session="sid-x") == 2
    for session in doomed:
        assert await stores.one.get(session.key) is None
    for session in kept:
        assert await stores.one.get(session.key) == session
    assert await stores.two.delete_matching(ISSUER, idp_session="sid-x") == 0


async def test_delete_matching_by_subject_ends_every_session_of_that_issuers_subject(stores):
    doomed = [make_session("1" * 64, sid="sid-1"), make_session("2" * 64, sid=None)]
    kept = [make_session("3" * 64, subject="bob"),
            make_session("4" * 64, issuer=OTHER_ISSUER),                  # the same subject at another issuer
            make_session("5" * 64, subject="alicE")]
    for session in doomed + kept:
        await stores.one.create(session)
    assert await stores.two.delete_matching(ISSUER, subject="alice") == 2
    for session in doomed:
        assert await stores.one.get(session.key) is None
    for session in kept:
        assert await stores.one.get(session.key) == session


async def test_delete_matching_finds_a_session_by_the_sid_a_refresh_gave_it(stores):
    session = make_session(sid=None)
    await stores.one.create(session)
    assert await stores.one.update(session.advanced(idp_session="sid-later"))
    assert await stores.two.delete_matching(ISSUER, idp_session="sid-later") == 1
    assert await stores.one.get(session.key) is None


# -- claim ------------------------------------------------------------------------------------

async def test_a_claim_is_single_use_until_it_expires(stores):
    key = "login:" + "c" * 64
    assert await stores.one.claim(key, START + 600) is True
    assert await stores.one.claim(key, START + 600) is False
    assert await stores.two.claim(key, START + 1200) is False
    stores.clock.now = START + 599
    assert await stores.two.claim(key, START + 1200) is False
    stores.clock.now = START + 600
    assert await stores.two.claim(key, START + 1200) is True
    assert await stores.one.claim(key, START + 1800) is False
    assert await stores.one.claim("login:" + "d" * 64, START + 1800) is True


async def test_a_released_claim_can_be_claimed_again_on_every_handle(stores):
    key = "login:" + "e" * 64
    assert await stores.one.claim(key, START + 600) is True
    await stores.two.release(key)
    assert await stores.one.claim(key, START + 600) is True
    assert await stores.two.claim(key, START + 600) is False
    await stores.one.release("login:" + "f" * 64)            # nothing to give back: no error


async def test_two_claims_of_one_key_at_once_exactly_one_wins(stores):
    for i in range(5):
        key = f"refresh:{i}"
        results = await asyncio.gather(stores.one.claim(key, START + 30), stores.two.claim(key, START + 30))
        assert sorted(results) == [False, True]


async def test_claims_and_sessions_do_not_share_keys(stores):
    session = make_session()
    await stores.one.create(session)
    assert await stores.one.claim(session.key, START + 60) is True
    assert await stores.one.get(session.key) == session
    await stores.one.delete(session.key)
    assert await stores.one.claim(session.key, START + 60) is False


# -- SQLite specifics -------------------------------------------------------------------------

async def test_sqlite_creates_its_file_0600_and_refuses_one_open_to_others(tmp_path):
    path = tmp_path / "sessions.db"
    store = await asyncio.to_thread(SqliteStore.open, path)
    try:
        await store.create(make_session())
        made = sorted(p.name for p in tmp_path.iterdir())
        assert made == ["sessions.db", "sessions.db-shm", "sessions.db-wal"]
        for name in made:
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        await store.close()
    path.chmod(0o644)
    with pytest.raises(StartupError, match="chmod 600"):
        await asyncio.to_thread(SqliteStore.open, path)


async def test_sqlite_refuses_a_missing_directory_and_a_file_that_is_not_sqlite(tmp_path):
    with pytest.raises(StartupError, match="does not exist"):
        SqliteStore.open(tmp_path / "nowhere" / "sessions.db")
    assert not (tmp_path / "nowhere").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, not at all" * 100)
    junk.chmod(0o600)
    with pytest.raises(StartupError, match="not a usable SQLite file"):
        SqliteStore.open(junk)


async def test_sqlite_is_in_wal_mode_and_looks_sessions_up_by_index(tmp_path):
    store = await asyncio.to_thread(SqliteStore.open, tmp_path / "sessions.db")
    await store.close()
    with sqlite3.connect(tmp_path / "sessions.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        for column, index in (("idp_session", "sessions_by_idp_session"), ("subject", "sessions_by_subject")):
            plan = " ".join(row[3] for row in db.execute(
                f"EXPLAIN QUERY PLAN DELETE FROM sessions WHERE issuer = ? AND {column} = ?", ("i", "v")))
            assert index in plan, plan


async def test_sqlite_purges_expired_rows_on_a_later_write(tmp_path):
    clock = Clock()
    store = await asyncio.to_thread(SqliteStore.open, tmp_path / "sessions.db", clock=clock)
    try:
        await store.create(make_session("1" * 64, lifetime=10))
        await store.claim("login:x", START + 10)
        clock.now = START + PURGE_SECONDS + 1
        await store.create(make_session("2" * 64))
        with sqlite3.connect(tmp_path / "sessions.db") as db:
            assert [r[0] for r in db.execute("SELECT key FROM sessions")] == ["2" * 64]
            assert db.execute("SELECT count(*) FROM claims").fetchone()[0] == 0
    finally:
        await store.close()


async def test_sqlite_errors_are_the_store_being_unavailable(tmp_path):
    store = await asyncio.to_thread(SqliteStore.open, tmp_path / "sessions.db")
    await store.create(make_session())
    with sqlite3.connect(tmp_path / "sessions.db") as db:
        db.execute("DROP TABLE sessions")
    with pytest.raises(DependencyError) as raised:
        await store.get(make_session().key)
    assert raised.value.reason == Reason.SESSION_STORE_UNAVAILABLE
    await store.close()
    with pytest.raises(DependencyError):
        await store.get(make_session().key)


async def test_sqlite_never_runs_on_the_event_loop_thread(tmp_path, monkeypatch):
    import threading

    store = await asyncio.to_thread(SqliteStore.open, tmp_path / "sessions.db")
    seen: list[str] = []
    select: Callable[..., object] = store._select       # noqa: SLF001 - the seam is the thread it runs on
    monkeypatch.setattr(store, "_select", lambda *a: (seen.append(threading.current_thread().name), select(*a))[1])
    try:
        assert await store.get("a" * 64) is None
    finally:
        await store.close()
    assert seen and seen[0].startswith("idgate-session-store") and seen[0] != threading.main_thread().name


# -- DynamoDB specifics -----------------------------------------------------------------------

async def test_dynamodb_items_carry_the_ttl_and_no_session_id(dynamodb_table):
    clock = Clock()
    store = await asyncio.to_thread(open_dynamodb, dynamodb_table, clock)
    try:
        await store.create(make_session(lifetime=100.25))
        await store.claim("login:x", START + 0.5)
    finally:
        await store.close()
    items = {i["pk"]["S"]: i for i in dynamodb_table.client("dynamodb").scan(TableName=TABLE)["Items"]}
    session_item, claim_item = items["s#" + "a" * 64], items["c#login:x"]
    assert session_item["ttl"] == {"N": str(int(START) + 101)} and claim_item["ttl"] == {"N": str(int(START) + 1)}
    assert dynamodb_store.BY_SID in session_item and dynamodb_store.BY_SUB in session_item
    assert "alice" not in session_item[dynamodb_store.BY_SUB]["S"]


async def test_dynamodb_without_its_table_or_its_endpoint_is_unavailable(moto):
    clock = Clock()
    store = await asyncio.to_thread(open_dynamodb, moto, clock)          # no table created
    try:
        with pytest.raises(DependencyError) as raised:
            await store.get("a" * 64)
        assert raised.value.reason == Reason.SESSION_STORE_UNAVAILABLE and TABLE in str(raised.value)
        with pytest.raises(DependencyError):
            await store.claim("login:x", START + 1)
    finally:
        await store.close()
    with refused_port() as port:
        store = await asyncio.to_thread(open_dynamodb, moto, clock, f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(DependencyError, match="unreachable"):
                await store.create(make_session())
        finally:
            await store.close()


async def test_dynamodb_an_item_that_is_not_a_session_is_the_store_gone_wrong(dynamodb_table):
    dynamodb_table.client("dynamodb").put_item(TableName=TABLE, Item={"pk": {"S": "s#" + "a" * 64},
                                                                     "body": {"S": '{"key": "x"}'}})
    store = await asyncio.to_thread(open_dynamodb, dynamodb_table, Clock())
    try:
        with pytest.raises(DependencyError, match="does not decode"):
            await store.get("a" * 64)
    finally:
        await store.close()


async def test_dynamodb_create_retried_after_a_lost_answer_finds_its_own_item(dynamodb_table):
    # What botocore's retry meets when the first PutItem was written but its answer lost on the way.
    store = await asyncio.to_thread(open_dynamodb, dynamodb_table, Clock())
    try:
        await store.create(make_session())
        await store.create(make_session())
        with pytest.raises(ValueError):
            await store.create(dataclasses.replace(make_session(), sealed_tokens="another"))
    finally:
        await store.close()


def test_the_table_definition_names_the_indexes_the_store_queries():
    definition = table_definition(TABLE)
    indexes = {i["IndexName"]: i["KeySchema"][0]["AttributeName"] for i in definition["GlobalSecondaryIndexes"]}
    assert indexes == {dynamodb_store.BY_SID: dynamodb_store.BY_SID, dynamodb_store.BY_SUB: dynamodb_store.BY_SUB}
    assert definition["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
