"""proxy.policy.diff: which way each change moves access, and who gains and loses what."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.policy.diff import CHANGED, NARROWER, WIDER, diff
from proxy.policy.store import compile_directory

ISSUER = "https://login.example.com"
BASE = f"""\
rules:
  - id: etl-reads
    who: {{issuer: {ISSUER}, subject: ["svc-etl-*"], groups: [data-eng], claims: {{tenant: acme}}}}
    http: [{{hosts: [orders.internal], methods: [GET], paths: ["/v1/orders/**"]}}]
  - id: no-admin
    effect: deny
    who: {{any: true}}
    http: [{{paths: ["/admin/**"]}}]
"""


def policy(tmp_path: Path, name: str, text: str):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "p.yaml").write_text(textwrap.dedent(text))
    return compile_directory(directory)


@pytest.mark.parametrize(("old", "new", "field", "direction"), [
    ("groups: [data-eng]", "groups: [data-eng, interns]", "who.groups", WIDER),
    ("groups: [data-eng]", "groups: [data-eng], client_id: etl", "who.client_ids", NARROWER),
    ("groups: [data-eng], ", "", "who.groups", WIDER),
    ("claims: {tenant: acme}", "claims: {tenant: acme, region: eu}", "who.claims.region", NARROWER),
    ("claims: {tenant: acme}", "claims: {tenant: [acme, globex]}", "who.claims.tenant", WIDER),
    ('subject: ["svc-etl-*"]', 'subject: ["svc-report"]', "who.subjects", CHANGED),
    ("methods: [GET]", "methods: [GET, POST]", "grants", WIDER),
    ('paths: ["/v1/orders/**"]', 'paths: ["/v1/orders/*"]', "grants", CHANGED),
    ('methods: [GET], paths: ["/v1/orders/**"]', 'methods: [GET], paths: ["/v1/orders/**", "/v1/x"]', "grants", WIDER),
])
def test_each_change_says_which_way_it_moves_access(tmp_path, old, new, field, direction):
    assert old in BASE
    change = diff(policy(tmp_path, "old", BASE), policy(tmp_path, "new", BASE.replace(old, new, 1)))
    [rule] = change.changed
    assert rule.rule_id == "etl-reads"
    assert [(f.field, f.direction) for f in rule.changes] == [(field, direction)]


def test_a_deny_rule_that_covers_more_narrows_access_and_its_removal_is_access_gained(tmp_path):
    old = policy(tmp_path, "old", BASE)
    wider_deny = diff(old, policy(tmp_path, "new", BASE.replace('paths: ["/admin/**"]', 'paths: ["/admin/**", "/v1/orders/secret"]')))
    assert [(c.rule_id, c.direction) for c in wider_deny.changed] == [("no-admin", NARROWER)]
    gone = diff(old, policy(tmp_path, "gone", BASE.split("  - id: no-admin")[0]))
    assert gone.removed and gone.removed[0][0] == "no-admin"
    etl = next(a for a in gone.access if "subject=svc-etl-*" in a.label)
    assert etl.lost == ("deny * * /admin/**",) and etl.gained == ()


def test_an_added_group_is_an_identity_that_gains(tmp_path):
    change = diff(policy(tmp_path, "old", BASE), policy(tmp_path, "new", BASE.replace("groups: [data-eng]",
                                                                                 "groups: [data-eng, interns]")))
    gaining = {a.label: a.gained for a in change.access}
    interns = next(label for label in gaining if "groups=interns" in label)
    assert gaining[interns] == ("allow GET orders.internal /v1/orders/**",)
    assert all("groups=data-eng" not in label for label in gaining)     # data-eng had it already


def test_the_same_access_in_other_words_is_no_change(tmp_path):
    reordered = BASE.replace("methods: [GET], ", "").replace("hosts: [orders.internal], ",
                                                            "hosts: [orders.internal], methods: [GET], ")
    change = diff(policy(tmp_path, "old", BASE), policy(tmp_path, "new", reordered))
    assert change.empty and change.record()["counts"] == {"added": 0, "removed": 0, "changed": 0, "identities": 0}


def test_aws_grants_are_compared_by_table_action_and_keys(tmp_path):
    aws = BASE + f"""\
  - id: etl-table
    who: {{issuer: {ISSUER}, subject: ["svc-etl-*"]}}
    aws:
      role_arn: arn:aws:iam::123456789012:role/etl
      dynamodb: [{{table: orders, actions: [GetItem], leading_keys: ["${{claims.tenant}}"]}}]
"""
    change = diff(policy(tmp_path, "old", aws), policy(tmp_path, "new", aws.replace("[GetItem]", "[GetItem, PutItem]")))
    [rule] = change.changed
    assert rule.direction == WIDER
    assert rule.changes[0].after == ("aws role/etl orders PutItem keys=${claims.tenant}",)
