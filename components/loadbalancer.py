"""Internet-facing application load balancer in front of the API hosts (spec 3.4).

HTTPS with a TLS 1.3 policy (TLS 1.2 minimum) and the spec's HSTS header set by the load
balancer itself; HTTP answers 301 to HTTPS. The certificate is an existing ACM certificate or
a DNS-validated one created here. Maintenance mode (go-live plan, step 1) is a top-priority
rule answering 503 with a small page, switched by configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pulumi
import pulumi_aws as aws

from components.common import name_tag, physical_prefix, type_token

HSTS_HEADER = "max-age=31536000; includeSubDomains; preload"
MAINTENANCE_PAGE = Path(__file__).resolve().parent / "templates" / "loadbalancer" / "maintenance.html"
# The page's mark (a meta tag): the monitoring host's blackbox probe tells planned maintenance
# from an outage by a 503 carrying it (components/templates/monitoring/blackbox/).
MAINTENANCE_MARKER = "psychology-api-maintenance"
# Fixed-response bodies are limited to 1024 characters by Elastic Load Balancing.
FIXED_RESPONSE_LIMIT = 1024
# Below nginx's keepalive_timeout (75 s) on the hosts, so an idle connection is always closed
# by the load balancer first; above gunicorn's 30 s worker timeout.
IDLE_TIMEOUT_SECONDS = 60
DEREGISTRATION_DELAY_SECONDS = 30


@dataclass
class LoadBalancerArgs:
    vpc_id: pulumi.Input[str]                        # Network.vpc_id: the target group's VPC
    public_subnet_ids: Sequence[pulumi.Input[str]]   # Network.public_subnet_ids: one per AZ
    security_group_id: pulumi.Input[str]             # SecurityGroups.ids["alb"]
    access_log_bucket: pulumi.Input[str]             # the access-log PrivateBucket's name
    access_log_prefix: str                           # key prefix of the access logs in it (storage.ACCESS_LOG_PREFIX)
    app_port: int                                    # config appPort: where the hosts' nginx listens
    health_check_path: str                           # config healthCheckPath: probed on every host, 200 expected
    ssl_policy: str                                  # config sslPolicy: the HTTPS listener's TLS policy
    deletion_protection: bool                        # config deletionProtection
    maintenance: bool                                # config maintenance: every request answers 503 with the page
    certificate_arn: str = ""                        # config certificateArn: an existing ACM certificate; "" for none
    domain_name: str = ""                            # config domainName: the API's host name; "" for the ALB's DNS name
    hosted_zone_id: str = ""                         # config hostedZoneId: with domain_name, a DNS-validated certificate + alias
    allow_http_only: bool = False                    # config allowHttpOnly: throw-away stacks without a certificate
    # Resources that must exist before access logging is switched on (the log bucket and its
    # policy: Elastic Load Balancing checks that it may write there).
    access_log_bucket_ready: Sequence[pulumi.Resource] = field(default_factory=tuple)


class LoadBalancer(pulumi.ComponentResource):
    dns_name: pulumi.Output[str]
    zone_id: pulumi.Output[str]
    arn: pulumi.Output[str]
    arn_suffix: pulumi.Output[str]
    target_group_arn: pulumi.Output[str]
    target_group_arn_suffix: pulumi.Output[str]
    url: pulumi.Output[str]
    # Host name clients use: the domain, or the load balancer's DNS name.
    public_host: pulumi.Output[str]
    https_listener_arn: Optional[pulumi.Output[str]]
    http_listener_arn: pulumi.Output[str]
    https: bool

    def __init__(self, name: str, args: LoadBalancerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("loadbalancer", "LoadBalancer"), name, None, opts)
        managed_certificate = bool(args.domain_name and args.hosted_zone_id and not args.certificate_arn)
        self.https = bool(args.certificate_arn or managed_certificate)
        if not self.https and not args.allow_http_only:
            raise ValueError("the load balancer needs a certificate (certificateArn, or domainName + hostedZoneId) "
                             "unless allowHttpOnly is set")
        lb = self._load_balancer(name, args)
        target_group = self._target_group(name, args)
        forward = aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=target_group.arn)
        self.https_listener_arn = None
        if self.https:
            certificate_arn: pulumi.Input[str] = args.certificate_arn
            if managed_certificate:
                certificate_arn = self._dns_validated_certificate(name, args.domain_name, args.hosted_zone_id)
            serving = self._https_listeners(name, args, lb, forward, certificate_arn)
        else:
            serving = self._http_only_listener(name, lb, forward)
        if args.maintenance:
            self._maintenance_rule(name, serving)

        self.dns_name = lb.dns_name
        self.zone_id = lb.zone_id
        self.arn = lb.arn
        self.arn_suffix = lb.arn_suffix
        self.target_group_arn = target_group.arn
        self.target_group_arn_suffix = target_group.arn_suffix
        self.public_host = pulumi.Output.from_input(args.domain_name) if args.domain_name else lb.dns_name
        scheme = "https" if self.https else "http"
        self.url = self.public_host.apply(lambda host: f"{scheme}://{host}")
        if args.domain_name and args.hosted_zone_id:
            self._alias_records(name, args, lb)
        self.register_outputs({
            "dns_name": self.dns_name, "zone_id": self.zone_id, "arn": self.arn, "arn_suffix": self.arn_suffix,
            "target_group_arn": self.target_group_arn, "target_group_arn_suffix": self.target_group_arn_suffix,
            "url": self.url, "https_listener_arn": self.https_listener_arn, "http_listener_arn": self.http_listener_arn,
        })

    def _load_balancer(self, name: str, args: LoadBalancerArgs) -> aws.lb.LoadBalancer:
        return aws.lb.LoadBalancer(f"{name}-lb", aws.lb.LoadBalancerArgs(
            name=f"{physical_prefix()}-alb"[:32].rstrip("-"),
            load_balancer_type="application",
            internal=False,
            # The public tier has IPv6: answer IPv6 clients too (the alb group admits ::/0).
            ip_address_type="dualstack",
            subnets=list(args.public_subnet_ids),
            security_groups=[args.security_group_id],
            drop_invalid_header_fields=True,
            desync_mitigation_mode="defensive",
            enable_http2=True,
            # Django sees the Host the client sent (ALLOWED_HOSTS, absolute URLs).
            preserve_host_header=True,
            idle_timeout=IDLE_TIMEOUT_SECONDS,
            enable_deletion_protection=args.deletion_protection,
            access_logs=aws.lb.LoadBalancerAccessLogsArgs(
                bucket=args.access_log_bucket, prefix=args.access_log_prefix, enabled=True),
            tags=name_tag("alb"),
        ), pulumi.ResourceOptions(parent=self, depends_on=list(args.access_log_bucket_ready)))

    def _target_group(self, name: str, args: LoadBalancerArgs) -> aws.lb.TargetGroup:
        return aws.lb.TargetGroup(f"{name}-tg", aws.lb.TargetGroupArgs(
            vpc_id=args.vpc_id,
            port=args.app_port,
            protocol="HTTP",
            protocol_version="HTTP1",
            target_type="instance",
            # Requests in flight finish before a host leaves (instance refresh, scale-in).
            deregistration_delay=DEREGISTRATION_DELAY_SECONDS,
            # A fresh host gets its share of traffic gradually while its caches warm up.
            slow_start=30,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                enabled=True,
                protocol="HTTP",
                port="traffic-port",
                path=args.health_check_path,
                matcher="200",
                interval=15,
                timeout=5,
                healthy_threshold=2,
                unhealthy_threshold=3,
            ),
            tags=name_tag("api-tg"),
        ), pulumi.ResourceOptions(parent=self))

    def _https_listeners(self, name: str, args: LoadBalancerArgs, lb: aws.lb.LoadBalancer,
                         forward: aws.lb.ListenerDefaultActionArgs, certificate_arn: pulumi.Input[str]) -> aws.lb.Listener:
        """HTTPS forwarding to the hosts, and HTTP answering 301 to HTTPS; returns the HTTPS one."""
        child = pulumi.ResourceOptions(parent=self)
        https_listener = aws.lb.Listener(f"{name}-https", aws.lb.ListenerArgs(
            load_balancer_arn=lb.arn,
            port=443,
            protocol="HTTPS",
            ssl_policy=args.ssl_policy,
            certificate_arn=certificate_arn,
            default_actions=[forward],
            # Spec 3.4.1: HSTS on every HTTPS response, including the load balancer's own.
            routing_http_response_strict_transport_security_header_value=HSTS_HEADER,
            routing_http_response_x_content_type_options_header_value="nosniff",
            routing_http_response_x_frame_options_header_value="SAMEORIGIN",
            routing_http_response_server_enabled=False,
            tags=name_tag("alb-https"),
        ), child)
        http_listener = aws.lb.Listener(f"{name}-http", aws.lb.ListenerArgs(
            load_balancer_arn=lb.arn,
            port=80,
            protocol="HTTP",
            default_actions=[aws.lb.ListenerDefaultActionArgs(
                type="redirect",
                redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                    protocol="HTTPS", port="443", status_code="HTTP_301"))],
            tags=name_tag("alb-http"),
        ), child)
        self.https_listener_arn = https_listener.arn
        self.http_listener_arn = http_listener.arn
        return https_listener

    def _http_only_listener(self, name: str, lb: aws.lb.LoadBalancer,
                            forward: aws.lb.ListenerDefaultActionArgs) -> aws.lb.Listener:
        """Staging without a certificate, explicitly allowed by allowHttpOnly: plain HTTP
        forwards (no HSTS: it means nothing over HTTP)."""
        http_listener = aws.lb.Listener(f"{name}-http", aws.lb.ListenerArgs(
            load_balancer_arn=lb.arn,
            port=80,
            protocol="HTTP",
            default_actions=[forward],
            routing_http_response_x_content_type_options_header_value="nosniff",
            routing_http_response_x_frame_options_header_value="SAMEORIGIN",
            routing_http_response_server_enabled=False,
            tags=name_tag("alb-http"),
        ), pulumi.ResourceOptions(parent=self))
        self.http_listener_arn = http_listener.arn
        return http_listener

    def _maintenance_rule(self, name: str, serving: aws.lb.Listener) -> None:
        """Top priority on the serving listener: every path answers 503 with the maintenance page."""
        aws.lb.ListenerRule(f"{name}-maintenance", aws.lb.ListenerRuleArgs(
            listener_arn=serving.arn,
            priority=1,
            conditions=[aws.lb.ListenerRuleConditionArgs(
                path_pattern=aws.lb.ListenerRuleConditionPathPatternArgs(values=["/*"]))],
            actions=[aws.lb.ListenerRuleActionArgs(
                type="fixed-response",
                fixed_response=aws.lb.ListenerRuleActionFixedResponseArgs(
                    status_code="503", content_type="text/html", message_body=maintenance_page()))],
            tags=name_tag("alb-maintenance"),
        ), pulumi.ResourceOptions(parent=self))

    def _alias_records(self, name: str, args: LoadBalancerArgs, lb: aws.lb.LoadBalancer) -> None:
        for record_type in ("A", "AAAA"):
            aws.route53.Record(f"{name}-alias-{record_type.lower()}", aws.route53.RecordArgs(
                zone_id=args.hosted_zone_id,
                name=args.domain_name,
                type=record_type,
                aliases=[aws.route53.RecordAliasArgs(
                    name=lb.dns_name, zone_id=lb.zone_id, evaluate_target_health=True)],
            ), pulumi.ResourceOptions(parent=self))

    def _dns_validated_certificate(self, name: str, domain: str, zone_id: str) -> pulumi.Output[str]:
        child = pulumi.ResourceOptions(parent=self)
        certificate = aws.acm.Certificate(f"{name}-certificate", aws.acm.CertificateArgs(
            domain_name=domain,
            validation_method="DNS",
            key_algorithm="RSA_2048",
            tags=name_tag("api-certificate"),
        ), child)
        # One domain, so one validation record; ACM renews the certificate on its own for as
        # long as the record stays.
        option = certificate.domain_validation_options[0]
        record = aws.route53.Record(f"{name}-certificate-validation", aws.route53.RecordArgs(
            zone_id=zone_id,
            name=option.resource_record_name,
            type=option.resource_record_type,
            records=[option.resource_record_value],
            ttl=300,
            allow_overwrite=True,
        ), child)
        validation = aws.acm.CertificateValidation(f"{name}-certificate-issued", aws.acm.CertificateValidationArgs(
            certificate_arn=certificate.arn, validation_record_fqdns=[record.fqdn]), child)
        # The listener waits for the issued certificate, not just the request.
        return validation.certificate_arn


def maintenance_page() -> str:
    body = MAINTENANCE_PAGE.read_text(encoding="utf-8")
    if len(body) > FIXED_RESPONSE_LIMIT:
        raise ValueError(f"{MAINTENANCE_PAGE.name} has {len(body)} characters; a fixed response allows {FIXED_RESPONSE_LIMIT}")
    if MAINTENANCE_MARKER not in body:
        raise ValueError(f"{MAINTENANCE_PAGE.name} lacks {MAINTENANCE_MARKER!r}, which monitoring needs to tell maintenance from an outage")
    return body
