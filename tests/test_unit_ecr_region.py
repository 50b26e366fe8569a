"""Which region an ECR-style upstream's requests are signed for (SigV4 scopes are checked by the upstream)."""

from __future__ import annotations

import pytest

from registry.config import SecretConfig
from registry.proxy.rules import ecr_region, signing_region


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "eu-west-1"),
        ("https://123456789012.dkr.ecr.us-east-2.amazonaws.com", "us-east-2"),
        ("123456789012.dkr.ecr.us-gov-west-1.amazonaws.com:443", "us-gov-west-1"),
        ("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com", "us-east-1"),
        ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        ("http://127.0.0.1:5000", None),
        ("registry-1.docker.io", None),
        ("evil.com/123456789012.dkr.ecr.eu-west-1.amazonaws.com", None),
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.com", None),
    ],
)
def test_ecr_region_from_the_host_name(url: str, region: str | None) -> None:
    assert ecr_region(url) == region


def test_signing_region_prefers_the_secret_then_the_host_then_ours() -> None:
    ecr_url, local_url = "123456789012.dkr.ecr.eu-west-1.amazonaws.com", "http://127.0.0.1:5000"
    assert signing_region("", ecr_url, "us-east-1") == "eu-west-1"
    assert signing_region("", local_url, "us-east-1") == "us-east-1"
    assert signing_region("ap-south-1", ecr_url, "us-east-1") == "ap-south-1"
    assert SecretConfig().region == ""
