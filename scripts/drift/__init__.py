"""Drift detection: engine mode (read-only refresh preview through the Automation API) and
account scan (stack exports against live AWS, no Pulumi CLI). See __main__ for usage."""
