"""What every tier of the program shares: the validated configuration, the tagging provider,
the stack's account, zones and host image, and the data key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.config import PROJECT, SecretSettings, StackConfig


def default_tags(environment: str) -> dict[str, str]:
    return {"project": PROJECT, "stack": pulumi.get_stack(), "managed-by": "pulumi", "environment": environment}


@dataclass(frozen=True)
class StackContext:
    cfg: StackConfig
    secrets: SecretSettings
    opts: pulumi.ResourceOptions       # every component: the tagging provider
    invoke: pulumi.InvokeOptions       # every lookup: the same provider
    account_id: str
    azs: list[str]                     # the first azCount available zones; every tier spans them
    ami: aws.ec2.AwaitableGetAmiResult  # the one image every host boots (components/ami.py)
    key_arn: pulumi.Output[str]        # the data key: RDS, Redis, secrets, backups, EBS, logs, the topic
    tags: dict[str, str]               # for what the provider's default tags do not reach

    @property
    def region(self) -> str:
        return self.cfg.region

    def outputs(self) -> dict[str, Any]:
        """The output contract's part that echoes the stack's settings (infra/outputs.py)."""
        return {"environment": self.cfg.environment, "region": self.region, "availability_zones": self.azs,
                "vpc_cidr": self.cfg.vpc_cidr, "maintenance_mode": self.cfg.maintenance, "kms_key_arn": self.key_arn}
