"""The provider check: the offline plan judged by the real hashicorp/aws provider and checkov."""
