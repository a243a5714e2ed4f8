"""A worker as Airflow runs one: plain boto3, credentials only from the container provider (idgate).
Run as a subprocess by tests/integration/test_boto3_container_provider.py; prints one JSON line per step.

Steps: resolve credentials, write and read a DynamoDB item; print "ROTATE", wait for a line on stdin
(the test rotates the token file meanwhile), move the credentials' clock into botocore's advisory refresh
window (credentials live ≥ 30 minutes: no test waits for that), refresh, and read again.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Any

import boto3
from botocore.credentials import RefreshableCredentials

TABLE = sys.argv[1]
PARTITION = sys.argv[2]


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    session = boto3.session.Session()
    credentials = session.get_credentials()
    assert isinstance(credentials, RefreshableCredentials), type(credentials)
    frozen = credentials.get_frozen_credentials()
    say(step="resolved", method=credentials.method, access_key=frozen.access_key)

    dynamodb = session.client("dynamodb")
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": PARTITION}, "sk": {"S": "1"}, "status": {"S": "new"}})
    item = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": PARTITION}, "sk": {"S": "1"}})["Item"]
    say(step="read", status=item["status"]["S"])

    say(step="ROTATE")
    sys.stdin.readline()

    # botocore refreshes when fewer than 15 minutes are left: pretend 13 are (its clock is injectable,
    # this is the one place a test can move it), so the next use refreshes and re-reads the token file.
    remaining = credentials._seconds_remaining()          # noqa: SLF001 - see above
    real_now = credentials._time_fetcher                  # noqa: SLF001
    shift = timedelta(seconds=remaining - 13 * 60)
    credentials._time_fetcher = lambda: real_now() + shift  # noqa: SLF001
    refreshed = credentials.get_frozen_credentials()
    dynamodb.update_item(TableName=TABLE, Key={"pk": {"S": PARTITION}, "sk": {"S": "1"}},
                         UpdateExpression="SET #s = :s", ExpressionAttributeNames={"#s": "status"},
                         ExpressionAttributeValues={":s": {"S": "shipped"}})
    item = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": PARTITION}, "sk": {"S": "1"}})["Item"]
    say(step="refreshed", access_key=refreshed.access_key, status=item["status"]["S"])


if __name__ == "__main__":
    main()
