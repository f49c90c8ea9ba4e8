"""The alerts topic and the CloudWatch alarms: the second line of alerting, which keeps
working when the monitoring host (Prometheus/Alertmanager) is down.

`AlertsTopic` is the SNS topic every alarm and, when no chat/PagerDuty channel is configured,
Alertmanager publish to; it is encrypted with the data key. `CloudWatchAlarms` watches the load
balancer, the API hosts, RDS, ElastiCache and the monitoring host itself from AWS's side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_aws as aws

from components.common import name_tag, physical_prefix, policy_json, type_token
from components.monitoring_render import CLOUDWATCH_NAMESPACE, DATA_DIR
from components.postgres_parameters import max_connections
from scripts.dbops.rotation_check import DEFAULT_MARGIN_DAYS as ROTATION_MARGIN_DAYS
from scripts.dbops.rotation_check import METRIC_NAME as ROTATION_METRIC

# Thresholds (spec 5.3.1 where it has one).
ERROR_RATE_PERCENT = 1.0                 # 5xx share of requests
ERROR_RATE_MIN_REQUESTS = 20             # per minute: below this a single error is noise
LATENCY_P95_SECONDS = 0.8
CPU_PERCENT = 80.0
DB_CONNECTIONS_SHARE = 0.8               # of the parameter group's max_connections
DB_FREE_STORAGE_SHARE = 0.10             # of the allocated storage
REDIS_MEMORY_PERCENT = 90.0              # of maxmemory
REDIS_EVICTIONS_PER_5MIN = 100
MONITORING_DISK_PERCENT = 85.0
# Requests the WAF blocked in 5 minutes: background scanning stays well below it; an attack, or
# a rule suddenly refusing real clients, does not.
WAF_BLOCKED_REQUESTS_PER_5MIN = 500

# Load-balancer alarms that planned maintenance would set off: the maintenance rule's fixed
# 503s count as HTTPCode_ELB_5XX_Count, and behind the page the hosts may be replaced,
# unhealthy or gone. With maintenance on they keep evaluating (their state stays visible in
# the console) but notify nobody.
MAINTENANCE_SILENCED = ("alb-5xx-rate", "alb-unhealthy-hosts", "alb-no-healthy-hosts", "alb-latency-p95")


@dataclass
class AlertsTopicArgs:
    kms_key_arn: pulumi.Input[str]   # DataKey.arn: the topic is encrypted with it
    account_id: str                  # this account's id: only its CloudWatch alarms may publish
    region: str                      # AWS region (config aws:region): the alarms' ARNs the policy admits
    alarm_email: str = ""            # config alarmEmail: subscribed to the topic; "" for none


class AlertsTopic(pulumi.ComponentResource):
    arn: pulumi.Output[str]
    name: pulumi.Output[str]

    def __init__(self, name: str, args: AlertsTopicArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("alarms", "AlertsTopic"), name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        topic = aws.sns.Topic(f"{name}-topic", aws.sns.TopicArgs(
            name=f"{physical_prefix()}-alerts",
            display_name=f"{physical_prefix()} alerts",
            kms_master_key_id=args.kms_key_arn,
            tags=name_tag("alerts"),
        ), child)
        aws.sns.TopicPolicy(f"{name}-policy", aws.sns.TopicPolicyArgs(
            arn=topic.arn, policy=policy_json(topic_policy_statements(topic.arn, args.account_id, args.region))), child)
        if args.alarm_email:
            # AWS e-mails a confirmation link; nothing is delivered until it is clicked.
            aws.sns.TopicSubscription(f"{name}-email", aws.sns.TopicSubscriptionArgs(
                topic=topic.arn, protocol="email", endpoint=args.alarm_email), child)
        self.arn = topic.arn
        self.name = topic.name
        self.register_outputs({"arn": self.arn, "name": self.name})


@dataclass
class CloudWatchAlarmsArgs:
    alerts_topic_arn: pulumi.Input[str]           # AlertsTopic.arn: every alarm's (and OK's) action
    region: str                                   # AWS region (config aws:region): EC2 recover/reboot actions, WAF metrics
    # Load balancer and API hosts (from the load-balancer and compute parts).
    alb_arn_suffix: pulumi.Input[str]             # LoadBalancer.arn_suffix: the LoadBalancer dimension
    target_group_arn_suffix: pulumi.Input[str]    # LoadBalancer.target_group_arn_suffix: the TargetGroup dimension
    asg_name: pulumi.Input[str]                   # ApiHosts.asg_name: the API hosts' CPU
    # RDS (from the data part).
    db_instance_identifier: pulumi.Input[str]     # Database.identifier
    db_allocated_storage_gb: int                  # config dbAllocatedStorageGb (GiB): the free-storage threshold's base
    # ElastiCache: member clusters are "<replication group id>-001", "-002", ...
    redis_replication_group_id: pulumi.Input[str]  # Cache.replication_group_id
    redis_num_nodes: int                          # config redisNumNodes: one memory and one evictions alarm per node
    # The monitoring host (MonitoringHost.instance_id).
    monitoring_instance_id: pulumi.Input[str]
    # Config `maintenance`: the load balancer answers the maintenance page; the alarms in
    # MAINTENANCE_SILENCED take no action meanwhile.
    maintenance: bool = False
    # Secrets rotation (DbOps.rotation_function_names, DbOps.rotation_metric_namespace): an
    # alarm on each rotation function's Errors, and one on the hourly overdue check.
    rotation_function_names: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)  # function key -> name
    rotation_metric_namespace: Optional[str] = None  # None: no overdue alarm
    # The WAF's web ACL (components/waf.py), when there is one, and its mode: in "count" mode
    # nothing is blocked and the alarm watches the requests its rules counted.
    waf_web_acl_name: Optional[pulumi.Input[str]] = None  # WebFirewall.web_acl_name; None: no WAF alarm
    waf_mode: str = "block"                                # config wafMode: "block" or "count"


class CloudWatchAlarms(pulumi.ComponentResource):
    alarm_names: list[pulumi.Output[str]]

    def __init__(self, name: str, args: CloudWatchAlarmsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(type_token("alarms", "CloudWatchAlarms"), name, None, opts)
        self._name = name
        self._child = pulumi.ResourceOptions(parent=self)
        self._topic = args.alerts_topic_arn
        self._maintenance = args.maintenance
        self.alarm_names = []
        self._load_balancer_alarms(args)
        self._api_host_alarms(args)
        self._rds_alarms(args)
        self._redis_alarms(args)
        self._monitoring_host_alarms(args)
        self._rotation_alarms(args)
        if args.waf_web_acl_name is not None:
            self._waf_alarm(args.waf_web_acl_name, args.region, args.waf_mode)

        self.register_outputs({"alarm_names": self.alarm_names})

    def _load_balancer_alarms(self, args: CloudWatchAlarmsArgs) -> None:
        lb = {"LoadBalancer": args.alb_arn_suffix}

        def lb_count(metric: str) -> aws.cloudwatch.MetricAlarmMetricQueryMetricArgs:
            return aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
                namespace="AWS/ApplicationELB", metric_name=metric, dimensions=lb, period=60, stat="Sum")

        self._alarm(
            "alb-5xx-rate",
            f"API 5xx answers (targets and load balancer) above {ERROR_RATE_PERCENT:g}% of requests for 3 of 5 minutes",
            metric_queries=[
                aws.cloudwatch.MetricAlarmMetricQueryArgs(id="target_5xx", metric=lb_count("HTTPCode_Target_5XX_Count")),
                aws.cloudwatch.MetricAlarmMetricQueryArgs(id="elb_5xx", metric=lb_count("HTTPCode_ELB_5XX_Count")),
                aws.cloudwatch.MetricAlarmMetricQueryArgs(id="requests", metric=lb_count("RequestCount")),
                aws.cloudwatch.MetricAlarmMetricQueryArgs(
                    id="error_rate", label="5xx % of requests", return_data=True,
                    expression=(f"IF(requests >= {ERROR_RATE_MIN_REQUESTS}, "
                                "100 * (FILL(target_5xx, 0) + FILL(elb_5xx, 0)) / requests, 0)")),
            ],
            comparison_operator="GreaterThanThreshold", threshold=ERROR_RATE_PERCENT,
            evaluation_periods=5, datapoints_to_alarm=3,
            # No requests at all is not an error rate (the health alarms cover an empty pool).
            treat_missing_data="notBreaching")
        self._alarm(
            "alb-unhealthy-hosts",
            "At least one API host has failed the load balancer's health check for 5 minutes",
            namespace="AWS/ApplicationELB", metric_name="UnHealthyHostCount", statistic="Maximum",
            dimensions={**lb, "TargetGroup": args.target_group_arn_suffix}, period=60,
            # Five minutes rides through an instance refresh replacing hosts one by one.
            evaluation_periods=5, datapoints_to_alarm=5,
            comparison_operator="GreaterThanThreshold", threshold=0, treat_missing_data="notBreaching")
        self._alarm(
            "alb-no-healthy-hosts",
            "No healthy API host behind the load balancer: the API is down",
            namespace="AWS/ApplicationELB", metric_name="HealthyHostCount", statistic="Minimum",
            dimensions={**lb, "TargetGroup": args.target_group_arn_suffix}, period=60,
            evaluation_periods=2, datapoints_to_alarm=2,
            comparison_operator="LessThanThreshold", threshold=1,
            # The load balancer reports this every minute; silence means it is gone too.
            treat_missing_data="breaching")
        self._alarm(
            "alb-latency-p95",
            f"p95 target response time above {LATENCY_P95_SECONDS:g} s for 10 minutes",
            namespace="AWS/ApplicationELB", metric_name="TargetResponseTime", extended_statistic="p95",
            dimensions=lb, period=300, evaluation_periods=2, datapoints_to_alarm=2,
            comparison_operator="GreaterThanThreshold", threshold=LATENCY_P95_SECONDS,
            treat_missing_data="notBreaching")

    def _api_host_alarms(self, args: CloudWatchAlarmsArgs) -> None:
        self._alarm(
            "api-cpu",
            f"Average CPU of the API hosts above {CPU_PERCENT:g}% for 10 minutes (scaling is not keeping up)",
            namespace="AWS/EC2", metric_name="CPUUtilization", statistic="Average",
            dimensions={"AutoScalingGroupName": args.asg_name}, period=300, evaluation_periods=2,
            comparison_operator="GreaterThanThreshold", threshold=CPU_PERCENT, treat_missing_data="missing")

    def _rds_alarms(self, args: CloudWatchAlarmsArgs) -> None:
        db = {"DBInstanceIdentifier": args.db_instance_identifier}
        self._alarm(
            "rds-cpu", f"PostgreSQL CPU above {CPU_PERCENT:g}% for 10 minutes",
            namespace="AWS/RDS", metric_name="CPUUtilization", statistic="Average", dimensions=db,
            period=300, evaluation_periods=2, comparison_operator="GreaterThanThreshold", threshold=CPU_PERCENT,
            treat_missing_data="missing")
        free_bytes = int(args.db_allocated_storage_gb * DB_FREE_STORAGE_SHARE * 1024 ** 3)
        self._alarm(
            "rds-free-storage",
            f"PostgreSQL free storage below {DB_FREE_STORAGE_SHARE:.0%} of the allocated "
            f"{args.db_allocated_storage_gb} GiB for 15 minutes (autoscaling failed or at its ceiling)",
            namespace="AWS/RDS", metric_name="FreeStorageSpace", statistic="Minimum", dimensions=db,
            period=300, evaluation_periods=3, comparison_operator="LessThanThreshold", threshold=free_bytes,
            treat_missing_data="missing")
        # The limit is the one this project's parameter group sets (components/postgres_parameters.py).
        limit = max_connections()
        connections = int(limit * DB_CONNECTIONS_SHARE)
        self._alarm(
            "rds-connections",
            f"PostgreSQL connections above {connections} (of max_connections {limit}) for 5 minutes",
            namespace="AWS/RDS", metric_name="DatabaseConnections", statistic="Maximum", dimensions=db,
            period=60, evaluation_periods=5, datapoints_to_alarm=5,
            comparison_operator="GreaterThanThreshold", threshold=connections, treat_missing_data="missing")

    def _redis_alarms(self, args: CloudWatchAlarmsArgs) -> None:
        """Per member cluster: CloudWatch has no replication-group dimension."""
        for index in range(1, args.redis_num_nodes + 1):
            node = pulumi.Output.concat(args.redis_replication_group_id, f"-{index:03d}")
            self._alarm(
                f"redis-memory-{index:03d}",
                f"Redis node {index:03d} memory above {REDIS_MEMORY_PERCENT:g}% of maxmemory for 15 minutes",
                namespace="AWS/ElastiCache", metric_name="DatabaseMemoryUsagePercentage", statistic="Maximum",
                dimensions={"CacheClusterId": node}, period=300, evaluation_periods=3,
                comparison_operator="GreaterThanThreshold", threshold=REDIS_MEMORY_PERCENT, treat_missing_data="missing")
            self._alarm(
                f"redis-evictions-{index:03d}",
                f"Redis node {index:03d} evicting more than {REDIS_EVICTIONS_PER_5MIN} keys per 5 minutes for 15 minutes",
                namespace="AWS/ElastiCache", metric_name="Evictions", statistic="Sum",
                dimensions={"CacheClusterId": node}, period=300, evaluation_periods=3,
                comparison_operator="GreaterThanThreshold", threshold=REDIS_EVICTIONS_PER_5MIN,
                treat_missing_data="notBreaching")

    def _monitoring_host_alarms(self, args: CloudWatchAlarmsArgs) -> None:
        """The monitoring host, watched from outside, since it cannot watch itself."""
        host = {"InstanceId": args.monitoring_instance_id}
        self._alarm(
            "monitoring-system-check",
            "The monitoring host failed its system status check; EC2 recovers it onto healthy hardware",
            namespace="AWS/EC2", metric_name="StatusCheckFailed_System", statistic="Maximum", dimensions=host,
            period=60, evaluation_periods=2, datapoints_to_alarm=2,
            comparison_operator="GreaterThanOrEqualToThreshold", threshold=1, treat_missing_data="missing",
            extra_actions=[f"arn:aws:automate:{args.region}:ec2:recover"])
        self._alarm(
            "monitoring-instance-check",
            "The monitoring host failed its instance status check for 3 minutes; EC2 reboots it",
            namespace="AWS/EC2", metric_name="StatusCheckFailed_Instance", statistic="Maximum", dimensions=host,
            period=60, evaluation_periods=3, datapoints_to_alarm=3,
            comparison_operator="GreaterThanOrEqualToThreshold", threshold=1, treat_missing_data="missing",
            extra_actions=[f"arn:aws:automate:{args.region}:ec2:reboot"])
        self._alarm(
            "monitoring-heartbeat",
            "The monitoring host has reported no metrics for 15 minutes: Prometheus and Alertmanager are blind",
            namespace=CLOUDWATCH_NAMESPACE, metric_name="mem_used_percent", statistic="SampleCount", dimensions=host,
            period=60, evaluation_periods=15, datapoints_to_alarm=15,
            comparison_operator="LessThanThreshold", threshold=1, treat_missing_data="breaching")
        self._alarm(
            "monitoring-data-disk",
            f"The monitoring host's data volume ({DATA_DIR}) is more than {MONITORING_DISK_PERCENT:g}% full",
            namespace=CLOUDWATCH_NAMESPACE, metric_name="disk_used_percent", statistic="Maximum",
            dimensions={**host, "path": DATA_DIR}, period=300, evaluation_periods=2,
            comparison_operator="GreaterThanThreshold", threshold=MONITORING_DISK_PERCENT, treat_missing_data="missing")

    def _rotation_alarms(self, args: CloudWatchAlarmsArgs) -> None:
        """A failed rotation step raises in the function (Secrets Manager retries, then gives
        up): its Errors say so at once. A rotation that never runs, or stops being retried,
        shows only as a secret growing old: the hourly check counts those (scripts/dbops/
        rotation_check.py) and the alarm also fires when the check stops reporting."""
        for key, function_name in sorted(args.rotation_function_names.items()):
            self._alarm(
                f"rotation-errors-{key}",
                f"The rotation function {key} failed (a rotation step raised): the secret keeps its current "
                "value; see the function's log",
                namespace="AWS/Lambda", metric_name="Errors", statistic="Sum",
                dimensions={"FunctionName": function_name}, period=300, evaluation_periods=1,
                comparison_operator="GreaterThanOrEqualToThreshold", threshold=1, treat_missing_data="notBreaching")
        if args.rotation_metric_namespace is not None:
            self._alarm(
                "rotation-overdue",
                f"A rotated secret is past its schedule + {ROTATION_MARGIN_DAYS} days, or its rotation is off, for "
                "3 hours (or the hourly rotation check stopped reporting); the check function's log names it",
                namespace=args.rotation_metric_namespace, metric_name=ROTATION_METRIC, statistic="Maximum",
                period=3600, evaluation_periods=3, datapoints_to_alarm=3,
                comparison_operator="GreaterThanOrEqualToThreshold", threshold=1, treat_missing_data="breaching")

    def _waf_alarm(self, web_acl_name: pulumi.Input[str], region: str, mode: str) -> None:
        counted = mode == "count"
        self._alarm(
            "waf-blocked-requests",
            f"The WAF {'counted' if counted else 'blocked'} at least {WAF_BLOCKED_REQUESTS_PER_5MIN} requests in "
            "5 minutes: an attack, or a rule refusing real clients (sampled requests, aws-waf-logs- log group)",
            namespace="AWS/WAFV2", metric_name="CountedRequests" if counted else "BlockedRequests", statistic="Sum",
            dimensions={"WebACL": web_acl_name, "Region": region, "Rule": "ALL"}, period=300, evaluation_periods=1,
            comparison_operator="GreaterThanOrEqualToThreshold", threshold=WAF_BLOCKED_REQUESTS_PER_5MIN,
            # No blocked request at all publishes no data point: the normal case.
            treat_missing_data="notBreaching")

    def _alarm(self, role: str, description: str, *, extra_actions: Sequence[str] = (), **kwargs: Any) -> None:
        opts = self._child
        actions_enabled = True
        if role in MAINTENANCE_SILENCED:
            actions_enabled = not self._maintenance
            # Switching maintenance recreates the alarm (same name, so the old one goes first)
            # instead of updating it. An update keeps the alarm's state, and CloudWatch acts
            # only on a change of state: an alarm still in ALARM when maintenance ends would
            # never notify. A recreated alarm starts from INSUFFICIENT_DATA and reports its
            # state afresh (OK, or ALARM if the condition still holds).
            opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                replace_on_changes=["actionsEnabled"], delete_before_replace=True))
        alarm = aws.cloudwatch.MetricAlarm(f"{self._name}-{role}", aws.cloudwatch.MetricAlarmArgs(
            name=f"{physical_prefix()}-{role}",
            alarm_description=description,
            actions_enabled=actions_enabled,
            alarm_actions=[self._topic, *extra_actions],
            ok_actions=[self._topic],
            tags=name_tag(f"alarm-{role}"),
            **kwargs,
        ), opts)
        self.alarm_names.append(alarm.name)


def topic_policy_statements(topic_arn: pulumi.Input[str], account_id: str, region: str) -> list[dict[str, Any]]:
    """The alerts topic's resource policy. Principals of our own account publish through their
    IAM policies (the monitoring host's role); the resource policy only has to admit CloudWatch
    alarms, and refuses publishing without TLS."""
    return [
        {
            "Sid": "CloudWatchAlarmsOfThisAccountPublish",
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": "sns:Publish",
            "Resource": topic_arn,
            "Condition": {
                "StringEquals": {"aws:SourceAccount": account_id},
                "ArnLike": {"aws:SourceArn": f"arn:aws:cloudwatch:{region}:{account_id}:alarm:*"},
            },
        },
        {
            "Sid": "DenyPublishWithoutTls",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "sns:Publish",
            "Resource": topic_arn,
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
    ]
