"""The operating-system image of every EC2 host of the project (API hosts, monitoring host):
the newest Amazon Linux 2023 for x86_64 published by Amazon.

Amazon Linux 2023 because the hosts' egress allows HTTPS but not port 80, and AL2023's
package repositories are served over HTTPS. The program looks the image up once and gives
its id to every host component.
"""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_aws as aws

AL2023_AMI_NAME = "al2023-ami-2023.*-kernel-*-x86_64"


def amazon_linux_2023_ami(opts: Optional[pulumi.InvokeOptions] = None) -> aws.ec2.AwaitableGetAmiResult:
    """The newest Amazon Linux 2023 x86_64 image."""
    return aws.ec2.get_ami(
        most_recent=True,
        owners=["amazon"],
        filters=[
            aws.ec2.GetAmiFilterArgs(name="name", values=[AL2023_AMI_NAME]),
            aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
            aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"]),
        ],
        opts=opts)
