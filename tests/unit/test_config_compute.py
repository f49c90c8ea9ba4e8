"""Configuration the load balancer and API hosts refuse: the program stops before registering
anything, naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from harness.mock_engine import run_program
from infra.config import ConfigError

NO_CERTIFICATE = {"domainName": "", "hostedZoneId": "", "certificateArn": ""}


def problems(stack: str, overrides: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        run_program(stack, overrides=overrides)
    return {p.key: str(p) for p in caught.value.problems}


def test_prod_without_certificate_names_certificate_arn() -> None:
    found = problems("prod", NO_CERTIFICATE)
    assert "psychology-api:certificateArn" in found
    assert "allowHttpOnly" not in found["psychology-api:certificateArn"]  # not offered in prod


def test_prod_cannot_be_http_only() -> None:
    found = problems("prod", {**NO_CERTIFICATE, "allowHttpOnly": True})
    assert "psychology-api:allowHttpOnly" in found


def test_staging_without_certificate_needs_allow_http_only() -> None:
    found = problems("staging", {**NO_CERTIFICATE, "allowHttpOnly": False})
    assert "psychology-api:certificateArn" in found
    assert "allowHttpOnly" in found["psychology-api:certificateArn"]


def test_domain_without_zone_or_certificate() -> None:
    found = problems("prod", {"hostedZoneId": ""})
    assert "psychology-api:hostedZoneId" in found


def test_certificate_arn_must_be_an_acm_arn() -> None:
    found = problems("staging", {"certificateArn": "arn:aws:iam::123456789012:server-certificate/x"})
    assert "psychology-api:certificateArn" in found


@pytest.mark.parametrize("policy", ["ELBSecurityPolicy-2016-08", "ELBSecurityPolicy-TLS-1-1-2017-01"])
def test_tls_policies_below_tls13_are_refused(policy: str) -> None:
    assert "psychology-api:sslPolicy" in problems("prod", {"sslPolicy": policy})


def test_prod_with_one_api_host() -> None:
    found = problems("prod", {"apiMinSize": 1})
    assert "psychology-api:apiMinSize" in found
    assert "at least 2" in found["psychology-api:apiMinSize"]


def test_desired_capacity_outside_the_group() -> None:
    assert "psychology-api:apiDesiredCapacity" in problems("staging", {"apiDesiredCapacity": 3})
    assert "psychology-api:apiMaxSize" in problems("staging", {"apiMinSize": 2, "apiMaxSize": 1, "apiDesiredCapacity": 2})


@pytest.mark.parametrize(("key", "value"), [
    ("apiCpuTargetPercent", 95),
    ("apiRootVolumeGb", 8),
    ("apiMaxInstanceLifetimeDays", 366),   # AWS takes at most a year
    ("apiMaxInstanceLifetimeDays", -1),
    ("apiInstanceType", "huge"),
    ("appArtifactUrl", "https://example.com/app.tar.gz"),
    ("appArtifactUrl", "s3://releases/app.tar.gz"),  # without {version}, a release cannot roll
    ("appVersion", "1.0; rm -rf /"),
    ("healthCheckPath", "health"),
    ("appPort", 22),
    ("deletionProtection", False),
])
def test_compute_values_out_of_range(key: str, value: Any) -> None:
    stack = "prod" if key == "deletionProtection" else "staging"
    assert f"psychology-api:{key}" in problems(stack, {key: value})

