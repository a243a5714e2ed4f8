"""The `credentials` and `aws` config sections: defaults, strict values, each problem at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import AwsConfig, CredentialsConfig, load_config
from proxy.core.errors import ConfigError
from tests.factories import minimal_config as write



def test_broker_is_off_by_default_with_safe_aws_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), env={})
    assert config.credentials == CredentialsConfig(enabled=False, path="/.idgate/credentials")
    assert config.aws == AwsConfig(region="us-east-1", sts_endpoint=None, default_duration=3600)


def test_every_value_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """\
        credentials: {enabled: true, path: /aws/credentials}
        aws:
          region: eu-central-1
          sts_endpoint: http://127.0.0.1:5000
          default_duration: 7200
          sts_timeout: 1.5
          session_tags: false
          credential_cache_size: 500
        """), env={})
    assert config.credentials == CredentialsConfig(True, "/aws/credentials")
    assert config.aws == AwsConfig("eu-central-1", "http://127.0.0.1:5000", 7200, 1.5, False, 500)


def test_each_bad_value_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        credentials:
          enabled: true
          path: /.idgate/auth
        aws:
          region: US-EAST-1
          sts_endpoint: http://127.0.0.1:5000/path
          default_duration: 900
          sts_timeout: 0
          credential_cache_size: 0
          role: etl
        """)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    by_line = {p.line: p.message for p in caught.value.problems}   # lines 1-2 are issuers and policies_dir
    assert sorted(by_line) == [5, 7, 8, 9, 10, 11, 12], caught.value.problems
    assert "forward_auth.path" in by_line[5]
    assert "not an AWS region" in by_line[7]
    assert "no path" in by_line[8]
    assert "2700" in by_line[9]
    assert "sts_timeout" in by_line[10] and "credential_cache_size" in by_line[11]
    assert "role" in by_line[12]
