"""The offline plan and test harness: the real program run under Pulumi's mock engine.

Never deployed: `pulumi up` runs infra/, the Lambda package ships scripts/lib and
scripts/dbops, the monitoring host's bundle the backup/restore scripts; none of them holds
this package."""
