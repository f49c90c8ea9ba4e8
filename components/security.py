"""Security groups of every tier and their rules (spec 3.3, made exact).

Each rule is its own resource with a description, so it can be changed, reviewed and audited
one at a time, and drift detection can tell exactly which rule appeared or vanished. The only
ingress from the internet is 80/443 on the load balancer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from components.common import name_tag, physical_prefix, type_token

POSTGRES_PORT = 5432
REDIS_PORT = 6379
NODE_EXPORTER_PORT = 9100
# nginx on the API hosts serves the application's /metrics here, apart from the public port:
# the load balancer forwards only the app port, so the internet never reaches the metrics.
APP_METRICS_PORT = 9180
MONITORING_UI_PORTS = {"grafana": 3000, "prometheus": 9090, "alertmanager": 9093}
ANYWHERE_V4 = "0.0.0.0/0"
ANYWHERE_V6 = "::/0"

# Roles, in the order the groups are created. `dbops` is the in-VPC database-operations
# function (migrations, health checks, rotation).
ROLES = ("alb", "api", "database", "redis", "dbops", "monitoring")
DESCRIPTIONS = {
    "alb": "Load balancer: HTTP/HTTPS from the internet, out only to the API hosts",
    "api": "API hosts: application port from the load balancer only, metrics from monitoring; HTTPS, SMTP, DNS out",
    "database": "PostgreSQL: 5432 from the API hosts, the database-operations function and the monitoring host",
    "redis": "Redis: 6379 from the API hosts, the database-operations function and the monitoring host",
    "dbops": "Database-operations function: PostgreSQL, Redis and HTTPS (Secrets Manager) out",
    "monitoring": "Monitoring host: UIs from admin networks only; scrapes hosts, databases and the public URL",
}


@dataclass
class SecurityGroupsArgs:
    vpc_id: pulumi.Input[str]     # Network.vpc_id
    vpc_cidr: str                 # config vpcCidr: where the VPC resolver (DNS) is
    app_port: int                 # config appPort: load balancer -> API hosts
    admin_cidrs: Sequence[str]    # config adminCidrs: networks that reach the monitoring UIs; [] for none
    ssh_cidrs: Sequence[str]      # config sshCidrs: networks allowed SSH to the API hosts; [] for none (SSM instead)


class SecurityGroups(pulumi.ComponentResource):
    ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: SecurityGroupsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("security", "SecurityGroups"), name, None, opts)
        self._name = name
        self._child = pulumi.ResourceOptions(parent=self)
        groups = {
            role: aws.ec2.SecurityGroup(f"{name}-{role}", aws.ec2.SecurityGroupArgs(
                # EC2 refuses group names that begin with "sg-", which the auto-name of the
                # logical name would; the prefix also reads well in the console.
                name_prefix=f"{physical_prefix()}-{role}-",
                vpc_id=args.vpc_id, description=DESCRIPTIONS[role],
                # Rules live in their own resources; the provider strips AWS's default
                # allow-all egress rule because none is declared here.
                tags=name_tag(f"{role}-sg", {"role": role}),
            ), self._child)
            for role in ROLES
        }
        self.ids = {role: group.id for role, group in groups.items()}
        self._load_balancer_rules(args)
        self._api_rules(args)
        self._data_store_rules()
        self._dbops_rules(args)
        self._monitoring_rules(args)
        self.register_outputs({"ids": self.ids})

    def _load_balancer_rules(self, args: SecurityGroupsArgs) -> None:
        """The only ingress from anywhere, on 80 (redirected) and 443."""
        for listener_port, what in ((80, "HTTP, answered with a redirect to HTTPS"), (443, "HTTPS")):
            self._ingress("alb", listener_port, cidr=ANYWHERE_V4, description=f"{what} from the internet (IPv4)")
            self._ingress("alb", listener_port, cidr=ANYWHERE_V6, description=f"{what} from the internet (IPv6)")
        self._egress("alb", args.app_port, group=self.ids["api"], peer="api", description="Forward requests to the API hosts")

    def _api_rules(self, args: SecurityGroupsArgs) -> None:
        sg = self.ids
        self._ingress("api", args.app_port, group=sg["alb"], peer="alb", description="Requests from the load balancer")
        self._ingress("api", APP_METRICS_PORT, group=sg["monitoring"], peer="monitoring",
                      description="Prometheus scrapes application metrics (nginx metrics port)")
        self._ingress("api", NODE_EXPORTER_PORT, group=sg["monitoring"], peer="monitoring",
                      description="Prometheus scrapes node_exporter")
        for cidr in args.ssh_cidrs:
            self._ingress("api", 22, cidr=cidr, description=f"SSH from admin network {cidr}")
        self._outbound_common("api", args.vpc_cidr)
        self._egress("api", 587, cidr=ANYWHERE_V4, description="SMTP submission (STARTTLS) for e-mail")
        self._egress("api", 25, cidr=ANYWHERE_V4, description="SMTP relay for e-mail")
        self._egress("api", POSTGRES_PORT, group=sg["database"], peer="database", description="PostgreSQL inside the VPC")
        self._egress("api", REDIS_PORT, group=sg["redis"], peer="redis", description="Redis inside the VPC")

    def _data_store_rules(self) -> None:
        """Only from the three clients that need them; no egress at all."""
        for client in ("api", "dbops", "monitoring"):
            self._ingress("database", POSTGRES_PORT, group=self.ids[client], peer=client,
                          description=f"PostgreSQL from the {client} group")
            self._ingress("redis", REDIS_PORT, group=self.ids[client], peer=client,
                          description=f"Redis from the {client} group")

    def _dbops_rules(self, args: SecurityGroupsArgs) -> None:
        """The database-operations functions."""
        self._outbound_common("dbops", args.vpc_cidr)
        self._egress("dbops", POSTGRES_PORT, group=self.ids["database"], peer="database",
                     description="PostgreSQL inside the VPC")
        self._egress("dbops", REDIS_PORT, group=self.ids["redis"], peer="redis", description="Redis inside the VPC")

    def _monitoring_rules(self, args: SecurityGroupsArgs) -> None:
        sg = self.ids
        for ui, ui_port in MONITORING_UI_PORTS.items():
            for cidr in args.admin_cidrs:
                self._ingress("monitoring", ui_port, cidr=cidr, description=f"{ui.capitalize()} UI from admin network {cidr}")
        self._outbound_common("monitoring", args.vpc_cidr)
        self._egress("monitoring", APP_METRICS_PORT, group=sg["api"], peer="api", description="Scrape application metrics")
        self._egress("monitoring", NODE_EXPORTER_PORT, group=sg["api"], peer="api", description="Scrape node_exporter")
        self._egress("monitoring", POSTGRES_PORT, group=sg["database"], peer="database",
                     description="postgres_exporter and backups")
        self._egress("monitoring", REDIS_PORT, group=sg["redis"], peer="redis", description="redis_exporter")

    def _outbound_common(self, role: str, vpc_cidr: str) -> None:
        self._egress(role, 443, cidr=ANYWHERE_V4,
                     description="HTTPS: AWS APIs, package repositories and external integrations")
        # The Amazon resolver (VPC base + 2) is not filtered by security groups; these rules
        # state the intent and cover Route 53 Resolver endpoints inside the VPC.
        self._egress(role, 53, cidr=vpc_cidr, protocol="udp", description="DNS (UDP) to the VPC resolver")
        self._egress(role, 53, cidr=vpc_cidr, protocol="tcp", description="DNS (TCP) to the VPC resolver")

    def _rule_name(self, role: str, direction: str, port: int, protocol: str, peer: str) -> str:
        label = peer.replace("/", "-").replace(":", "-").replace(".", "-")
        if label == "0-0-0-0-0":
            label = "anywhere-v4"
        elif label == "--0":
            label = "anywhere-v6"
        suffix = "" if protocol == "tcp" else f"-{protocol}"
        return f"{self._name}-{role}-{direction}-{port}{suffix}-{label}"

    def _ingress(self, role: str, port: int, *, description: str, cidr: Optional[str] = None,
                 group: Optional[pulumi.Output[str]] = None, peer: Optional[str] = None,
                 protocol: str = "tcp") -> None:
        v4, v6 = _split_cidr(cidr)
        aws.vpc.SecurityGroupIngressRule(
            self._rule_name(role, "in", port, protocol, peer or cidr or ""),
            aws.vpc.SecurityGroupIngressRuleArgs(
                security_group_id=self.ids[role], ip_protocol=protocol, from_port=port, to_port=port,
                cidr_ipv4=v4, cidr_ipv6=v6, referenced_security_group_id=group, description=description,
                tags=name_tag(f"{role}-in-{port}")),
            self._child)

    def _egress(self, role: str, port: int, *, description: str, cidr: Optional[str] = None,
                group: Optional[pulumi.Output[str]] = None, peer: Optional[str] = None,
                protocol: str = "tcp") -> None:
        v4, v6 = _split_cidr(cidr)
        aws.vpc.SecurityGroupEgressRule(
            self._rule_name(role, "out", port, protocol, peer or cidr or ""),
            aws.vpc.SecurityGroupEgressRuleArgs(
                security_group_id=self.ids[role], ip_protocol=protocol, from_port=port, to_port=port,
                cidr_ipv4=v4, cidr_ipv6=v6, referenced_security_group_id=group, description=description,
                tags=name_tag(f"{role}-out-{port}")),
            self._child)


def _split_cidr(cidr: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    if cidr is None:
        return None, None
    if ipaddress.ip_network(cidr).version == 6:
        return None, cidr
    return cidr, None
