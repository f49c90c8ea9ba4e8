-- Read-only role for postgres_exporter on the monitoring host. pg_monitor gives it the
-- statistics views (pg_stat_*, pg_stat_statements) and nothing that writes. Its password comes
-- from the secret psychology-api/<stack>/database/monitor and is set by the migrate function,
-- never here. On RDS the master holds pg_monitor with ADMIN OPTION, so it may grant it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_monitor') THEN
        CREATE ROLE psychology_monitor LOGIN CONNECTION LIMIT 5;
    END IF;
END
$$;

GRANT pg_monitor TO psychology_monitor;
-- Even a mistaken query from the exporter cannot write or hold locks for long.
ALTER ROLE psychology_monitor SET default_transaction_read_only = on;
ALTER ROLE psychology_monitor SET statement_timeout = '15s';

GRANT USAGE ON SCHEMA psychology_ops TO psychology_monitor;
GRANT SELECT ON psychology_ops.schema_migrations TO psychology_monitor;
