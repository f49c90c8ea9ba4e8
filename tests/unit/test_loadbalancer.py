"""The load balancer under the mock engine, for both stacks and the variants that matter."""

from __future__ import annotations

import pytest

from components.loadbalancer import FIXED_RESPONSE_LIMIT, HSTS_HEADER, maintenance_page
from harness.mock_engine import Plan, PlannedResource, run_program
from infra.config import TLS13_POLICIES
from tests.conftest import HTTP_ONLY_OVERRIDES

LB = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
RULE = "aws:lb/listenerRule:ListenerRule"
TG = "aws:lb/targetGroup:TargetGroup"
RECORD = "aws:route53/record:Record"
CERT = "aws:acm/certificate:Certificate"
CERT_ARN = "arn:aws:acm:eu-central-1:123456789012:certificate/0a1b2c3d-1111-4222-8333-444455556666"


def listener(plan: Plan, port: int) -> PlannedResource:
    found = [r for r in plan.of_type(LISTENER) if r.inputs["port"] == port]
    assert len(found) == 1, [r.name for r in plan.of_type(LISTENER)]
    return found[0]


@pytest.fixture(scope="module")
def maintenance_prod() -> Plan:
    return run_program("prod", overrides={"maintenance": True})


@pytest.fixture(scope="module")
def maintenance_staging() -> Plan:
    return run_program("staging", overrides={"maintenance": True})


@pytest.fixture(scope="module")
def maintenance_http_only() -> Plan:
    return run_program("staging", overrides={"maintenance": True, **HTTP_ONLY_OVERRIDES})


@pytest.fixture(scope="module")
def staging_with_certificate() -> Plan:
    return run_program("staging", overrides={"certificateArn": CERT_ARN, "domainName": "api.staging.example.com",
                                             "hostedZoneId": ""})


def test_load_balancer_is_public_dual_stack_in_the_public_subnets(plan: Plan) -> None:
    lb = plan.one(LB)
    assert lb.inputs["loadBalancerType"] == "application"
    assert lb.inputs["internal"] is False
    assert lb.inputs["ipAddressType"] == "dualstack"
    public = {r.id for r in plan.of_type("aws:ec2/subnet:Subnet") if r.inputs["tags"]["tier"] == "public"}
    assert set(lb.inputs["subnets"]) == public
    alb_sg = next(r.id for r in plan.of_type("aws:ec2/securityGroup:SecurityGroup") if r.name == "sg-alb")
    assert lb.inputs["securityGroups"] == [alb_sg]


def test_invalid_headers_dropped_and_sensible_timeouts(plan: Plan) -> None:
    lb = plan.one(LB).inputs
    assert lb["dropInvalidHeaderFields"] is True
    assert 30 < lb["idleTimeout"] <= 75


def test_deletion_protection_in_prod_only(prod: Plan, staging: Plan) -> None:
    assert prod.one(LB).inputs["enableDeletionProtection"] is True
    assert staging.one(LB).inputs["enableDeletionProtection"] is False


def test_access_logs_go_to_the_access_log_bucket(plan: Plan) -> None:
    logs = plan.one(LB).inputs["accessLogs"]
    assert logs == {"bucket": plan.outputs["access_log_bucket_name"], "prefix": "alb", "enabled": True}
    # Elastic Load Balancing checks write access when logging is switched on: the bucket
    # policy must exist first.
    assert "access-logs-policy" in plan.one(LB).depends_on


def test_prod_https_listener_has_tls13_policy_certificate_and_hsts(prod: Plan) -> None:
    https = listener(prod, 443).inputs
    assert https["protocol"] == "HTTPS"
    assert https["sslPolicy"] in TLS13_POLICIES and "TLS13" in https["sslPolicy"]
    issued = prod.one("aws:acm/certificateValidation:CertificateValidation")
    assert https["certificateArn"] == issued.outputs["certificateArn"]
    assert https["certificateArn"].startswith("arn:aws:acm:eu-central-1:")
    assert https["routingHttpResponseStrictTransportSecurityHeaderValue"] == "max-age=31536000; includeSubDomains; preload"
    assert https["routingHttpResponseXContentTypeOptionsHeaderValue"] == "nosniff"
    assert https["routingHttpResponseXFrameOptionsHeaderValue"] == "SAMEORIGIN"
    assert https["defaultActions"] == [{"type": "forward", "targetGroupArn": prod.one(TG).outputs["arn"]}]


def test_prod_http_listener_redirects_301_to_https(prod: Plan) -> None:
    http = listener(prod, 80).inputs
    assert http["protocol"] == "HTTP"
    (action,) = http["defaultActions"]
    assert action["type"] == "redirect"
    assert action["redirect"] == {"protocol": "HTTPS", "port": "443", "statusCode": "HTTP_301"}


def test_prod_certificate_is_dns_validated_in_the_zone(prod: Plan) -> None:
    cert = prod.one(CERT).inputs
    assert cert["domainName"] == "api.psychology.example.com"
    assert cert["validationMethod"] == "DNS"
    validation_record = prod.named("alb-certificate-validation").inputs
    assert validation_record["zoneId"] == "Z0123456789EXAMPLE0AB"
    assert validation_record["type"] == "CNAME"
    assert validation_record["name"].endswith(".api.psychology.example.com.")
    issued = prod.one("aws:acm/certificateValidation:CertificateValidation").inputs
    assert issued["validationRecordFqdns"] == [validation_record["name"].rstrip(".")]


def test_prod_alias_records_point_at_the_load_balancer(prod: Plan) -> None:
    lb = prod.one(LB).outputs
    aliases = {r.inputs["type"]: r.inputs for r in prod.of_type(RECORD) if r.inputs.get("aliases")}
    assert set(aliases) == {"A", "AAAA"}
    for record in aliases.values():
        assert record["name"] == "api.psychology.example.com"
        assert record["aliases"] == [{"name": lb["dnsName"], "zoneId": lb["zoneId"], "evaluateTargetHealth": True}]


def test_staging_serves_https_and_http_only_redirects(staging: Plan) -> None:
    assert sorted(r.inputs["port"] for r in staging.of_type(LISTENER)) == [80, 443]
    https = listener(staging, 443).inputs
    assert https["protocol"] == "HTTPS" and https["sslPolicy"] in TLS13_POLICIES
    assert https["certificateArn"] == staging.one("aws:acm/certificateValidation:CertificateValidation").outputs["certificateArn"]
    assert https["routingHttpResponseStrictTransportSecurityHeaderValue"] == HSTS_HEADER
    assert https["defaultActions"] == [{"type": "forward", "targetGroupArn": staging.one(TG).outputs["arn"]}]
    (action,) = listener(staging, 80).inputs["defaultActions"]
    assert action == {"type": "redirect", "redirect": {"protocol": "HTTPS", "port": "443", "statusCode": "HTTP_301"}}
    cert = staging.one(CERT).inputs
    assert cert["domainName"] == "api.staging.psychology.example.com" and cert["validationMethod"] == "DNS"
    assert staging.named("alb-certificate-validation").inputs["zoneId"] == "Z0123456789EXAMPLE0AB"
    aliases = {r.inputs["type"]: r.inputs["name"] for r in staging.of_type(RECORD) if r.inputs.get("aliases")}
    assert aliases == {"A": "api.staging.psychology.example.com", "AAAA": "api.staging.psychology.example.com"}
    assert staging.outputs["api_url"] == "https://api.staging.psychology.example.com"


def test_checked_in_stacks_never_serve_plain_http() -> None:
    import yaml

    from harness.mock_engine import ROOT_DIR

    for stack in ("staging", "prod"):
        config = yaml.safe_load((ROOT_DIR / f"Pulumi.{stack}.yaml").read_text())["config"]
        assert config.get("psychology-api:allowHttpOnly", False) is False, stack


def test_http_only_stack_forwards_plain_http(http_only_staging: Plan) -> None:
    plan = http_only_staging
    assert [r.inputs["port"] for r in plan.of_type(LISTENER)] == [80]
    http = listener(plan, 80).inputs
    assert http["defaultActions"][0]["type"] == "forward"
    # HSTS over plain HTTP means nothing and must not be claimed.
    assert "routingHttpResponseStrictTransportSecurityHeaderValue" not in http
    assert not plan.of_type(CERT)
    assert plan.outputs["api_url"] == f"http://{plan.outputs['alb_dns_name']}"


def test_staging_with_certificate_arn_serves_https(staging_with_certificate: Plan) -> None:
    plan = staging_with_certificate
    https = listener(plan, 443).inputs
    assert https["certificateArn"] == CERT_ARN
    assert https["routingHttpResponseStrictTransportSecurityHeaderValue"] == HSTS_HEADER
    assert listener(plan, 80).inputs["defaultActions"][0]["type"] == "redirect"
    assert not plan.of_type(CERT)  # an existing certificate is used, none is requested
    # The URL is the name the certificate is for (its DNS record lives outside this stack).
    assert plan.outputs["api_url"] == "https://api.staging.example.com"
    assert not plan.of_type("aws:route53/record:Record")


def test_target_group_health_check(plan: Plan) -> None:
    tg = plan.one(TG).inputs
    assert tg["port"] == 80 and tg["protocol"] == "HTTP" and tg["targetType"] == "instance"
    assert tg["deregistrationDelay"] <= 60
    check = tg["healthCheck"]
    assert check["path"] == "/health/"
    assert check["port"] == "traffic-port"
    assert check["matcher"] == "200"
    assert check["timeout"] < check["interval"]
    assert 2 <= check["healthyThreshold"] <= 5 and 2 <= check["unhealthyThreshold"] <= 5


def test_no_maintenance_rule_by_default(plan: Plan) -> None:
    assert not plan.of_type(RULE)
    assert plan.outputs["maintenance_mode"] is False


@pytest.mark.parametrize("variant", ["maintenance_prod", "maintenance_staging", "maintenance_http_only"])
def test_maintenance_rule_answers_503_first(variant: str, request: pytest.FixtureRequest) -> None:
    plan: Plan = request.getfixturevalue(variant)
    rule = plan.one(RULE).inputs
    assert rule["priority"] == 1
    assert rule["conditions"] == [{"pathPattern": {"values": ["/*"]}}]
    (action,) = rule["actions"]
    assert action["type"] == "fixed-response"
    assert action["fixedResponse"]["statusCode"] == "503"
    assert action["fixedResponse"]["contentType"] == "text/html"
    assert "<html" in action["fixedResponse"]["messageBody"]
    serving = listener(plan, 443 if plan.outputs["api_url"].startswith("https://") else 80)
    assert rule["listenerArn"] == serving.outputs["arn"]
    assert plan.outputs["maintenance_mode"] is True


def test_maintenance_page_fits_a_fixed_response() -> None:
    assert len(maintenance_page()) <= FIXED_RESPONSE_LIMIT


def test_outputs(plan: Plan) -> None:
    lb = plan.one(LB).outputs
    tg = plan.one(TG).outputs
    assert plan.outputs["alb_dns_name"] == lb["dnsName"]
    assert plan.outputs["alb_zone_id"] == lb["zoneId"]
    assert plan.outputs["alb_arn_suffix"] == lb["arnSuffix"].removeprefix("arn:")
    assert plan.outputs["alb_arn_suffix"].startswith("app/")
    assert plan.outputs["target_group_arn"] == tg["arn"]
    assert plan.outputs["target_group_arn_suffix"].startswith("targetgroup/")
    expected_url = {"prod": "https://api.psychology.example.com", "staging": "https://api.staging.psychology.example.com"}
    assert plan.outputs["api_url"] == expected_url[plan.stack]
