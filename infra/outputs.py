"""The output contract: every stack output CI and operators read (`pulumi stack output --json`),
with what it means. The single source of the outputs table in docs/ (generated) and of the
check that the program exports exactly these names (tests/unit/test_program.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# name -> meaning. None holds a secret value: secrets are referenced by ARN only.
OUTPUTS: dict[str, str] = {
    "environment": "`staging` or `prod`, the rule set the stack was validated with",
    "region": "AWS region of the stack",
    "availability_zones": "the AZs every tier spans, in subnet order",
    "vpc_id": "the VPC",
    "vpc_cidr": "the VPC's IPv4 CIDR",
    "public_subnet_ids": "public subnets (load balancer, NAT gateways), one per AZ",
    "private_subnet_ids": "private application subnets (API hosts, monitoring host, in-VPC functions), one per AZ",
    "database_subnet_ids": "isolated database subnets (RDS, ElastiCache), one per AZ; no route to the internet",
    "nat_public_ips": "public IPv4 addresses the private tier leaves the VPC with (allow-list them at integrations)",
    "security_group_ids": "map role -> security group id: `alb`, `api`, `database`, `redis`, `dbops`, `monitoring` (and `endpoints` when interface endpoints are on)",
    "kms_key_arn": "the customer-managed data key (rotation on) encrypting RDS, Redis, secrets, backups, EBS, logs and the alerts topic",
    "backup_bucket_name": "the backups bucket (SSE-KMS, versioned, TLS-only, lifecycle = `backupRetentionDays`)",
    "access_log_bucket_name": "the access-log bucket: the load balancer's access logs (prefix `alb/`) and the backups bucket's S3 server access logs (prefix `s3/backups/`)",
    "flow_log_group_name": "CloudWatch log group holding the VPC flow logs",
    "app_secret_arn": "Secrets Manager secret with the Django `SECRET_KEY` and `SECRET_KEY_FALLBACKS` (rotated every `secretRotationDays`)",
    "integration_secret_arns": "map integration -> secret ARN (`payments`, `telegram`, `google-calendar`, `smtp`)",
    "api_url": "the public URL of the API: `https://<domainName>`, or the load balancer's name (`http://` only in a throw-away `allowHttpOnly` stack)",
    "alb_dns_name": "the load balancer's DNS name (for an alias record elsewhere)",
    "alb_zone_id": "the load balancer's Route 53 hosted zone (for an alias record elsewhere)",
    "alb_arn_suffix": "the load balancer's CloudWatch dimension (`LoadBalancer`)",
    "target_group_arn_suffix": "the target group's CloudWatch dimension (`TargetGroup`)",
    "target_group_arn": "the API hosts' target group",
    "waf_web_acl_arn": "the WAF web ACL on the load balancer (absent with `wafEnabled` false)",
    "waf_log_group_name": "the WAF's `aws-waf-logs-` log group (absent with `wafEnabled` false)",
    "asg_name": "the API hosts' auto-scaling group",
    "api_role_name": "the API hosts' IAM role",
    "maintenance_mode": "whether the load balancer answers 503 with the maintenance page (`maintenance`)",
    "db_endpoint": "RDS PostgreSQL address (host name)",
    "db_port": "RDS PostgreSQL port",
    "db_name": "the application's database",
    "db_identifier": "RDS instance identifier",
    "db_master_secret_arn": "the RDS-managed master credentials (`{username, password}`)",
    "db_app_secret_arn": "the application's credentials (alternating users, rotated every `secretRotationDays`)",
    "db_monitor_secret_arn": "the read-only monitoring role's credentials (postgres_exporter; rotated the same way)",
    "db_backup_secret_arn": "the backup login's credentials (`pg_read_all_data`, read-only; the nightly backup on the monitoring host; rotated the same way)",
    "db_drill_secret_arn": "the restore drill's login (CREATEDB, its scratch database only; rotated the same way)",
    "redis_endpoint": "ElastiCache primary endpoint (host name)",
    "redis_port": "ElastiCache port",
    "redis_replication_group_id": "ElastiCache replication group",
    "redis_secret_arn": "Redis connection and AUTH token (`{host, port, auth_token, tls}`; the token rotates every `secretRotationDays`)",
    "dbops_function_names": "map of the in-VPC functions: `migrate`, `health`, `rotate`, `rotate-redis`, `rotate-generated`, `check-rotation`",
    "pre_migration_snapshot_id": "the manual RDS snapshot taken before the last release's migrations (prod; null when off)",
    "smoke_test_report": "summary of the last release's smoke tests: `{ok, summary, checks}` with each check's name, verdict and duration; null with `releaseSteps` off",
    "monitoring_instance_id": "the monitoring host",
    "grafana_url": "how to reach Grafana: the SSM port-forwarding command and the local URL",
    "grafana_admin_secret_arn": "Grafana's generated admin password (rotated every `secretRotationDays`, applied by the host within the hour)",
    "alerts_topic_arn": "the encrypted SNS topic alarms and Alertmanager publish to",
}

# Outputs only some configurations export (off with releaseSteps false, wafEnabled false, ...).
CONDITIONAL_OUTPUTS = frozenset({"pre_migration_snapshot_id", "smoke_test_report", "waf_web_acl_arn", "waf_log_group_name"})


class OutputContractError(Exception):
    """The program's exports and the contract above disagree: a programming error, not input."""


def contract_exports(values: Mapping[str, Any]) -> dict[str, Any]:
    """The stack outputs to export, in the contract's order: every name of OUTPUTS (the
    conditional ones when present) and nothing else; OutputContractError names any difference."""
    missing = sorted(OUTPUTS.keys() - CONDITIONAL_OUTPUTS - values.keys())
    unknown = sorted(values.keys() - OUTPUTS.keys())
    if missing or unknown:
        raise OutputContractError("the program's outputs differ from infra/outputs.py: "
                                  f"missing {missing or 'none'}, not in the contract {unknown or 'none'}")
    return {name: values[name] for name in OUTPUTS if name in values}
