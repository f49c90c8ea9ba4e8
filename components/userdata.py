"""EC2 user data: a cloud-config document gzipped (cloud-init recognises the gzip magic) and
base64-encoded, the one encoder of every host (API hosts' launch template, the monitoring
instance).

The gzip header carries no timestamp, so the same text always gives the same bytes: an
unchanged configuration never makes a new launch-template version (an instance refresh) or a
replaced monitoring host.
"""

from __future__ import annotations

import base64
import gzip

# "User data is limited to 16 KB, in raw form, before it is base64-encoded."
# (Amazon EC2 User Guide, "Work with instance user data",
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-add-user-data.html)
# The raw form here is the gzip stream: that is what EC2 stores and hands to cloud-init. Its
# base64 text is a third longer (up to 21848 characters) and is not what the limit counts.
USER_DATA_LIMIT_BYTES = 16 * 1024


def encode_user_data(cloud_config: str, *, host: str) -> str:
    """gzip, check EC2's limit on the gzip bytes, base64. `host` names the host in the error."""
    compressed = gzip.compress(cloud_config.encode(), compresslevel=9, mtime=0)
    if len(compressed) > USER_DATA_LIMIT_BYTES:
        raise ValueError(f"{host} user data is {len(compressed)} bytes gzipped; "
                         f"EC2 allows {USER_DATA_LIMIT_BYTES} before base64")
    return base64.b64encode(compressed).decode()


def decode_user_data(encoded: str) -> str:
    """The inverse of encode_user_data (tests, and operators reading a host's user data)."""
    return gzip.decompress(base64.b64decode(encoded)).decode()


def user_data_size(encoded: str) -> int:
    """Bytes EC2 counts against its limit: the payload before base64."""
    return len(base64.b64decode(encoded))
