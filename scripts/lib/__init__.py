"""The layer every script shares: AWS clients with an endpoint override, Secrets Manager reads,
command-line conventions (JSON output, one-line errors, exit codes) and secret masking."""
