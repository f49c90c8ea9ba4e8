"""The operating-system image of every EC2 host of the project (API hosts, monitoring host):
the newest Amazon Linux 2023 for x86_64 published by Amazon. The API hosts' launch template
names it by Amazon's public parameter, resolved at each launch; the monitoring host (one
long-lived instance) takes the image this lookup finds when it is created.

Amazon Linux 2023 because the hosts' egress allows HTTPS but not port 80, and AL2023's
package repositories are served over HTTPS.
"""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_aws as aws

AL2023_AMI_NAME = "al2023-ami-2023.*-kernel-*-x86_64"
# Amazon's public parameter naming the newest of those images. A launch template that names it
# (`resolve:ssm:...`) stays the same when Amazon publishes an image: each host gets the newest
# image when it is launched, and an `up` never rolls the hosts only because an image came out.
AL2023_LATEST_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
AL2023_AT_LAUNCH = f"resolve:ssm:{AL2023_LATEST_PARAMETER}"


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
