-- Alternating login users for the monitoring credentials, as 0001 does for the application.
--
-- psychology_monitor (0002) becomes the group: it keeps pg_monitor, the grants on
-- psychology_ops and its settings. psychology_monitor_a and psychology_monitor_b log in as its
-- members; the rotation function gives one of them a new password while postgres_exporter keeps
-- using the other, then swaps them. No password is set here.
--
-- psychology_monitor itself may still log in: a monitoring host that read the secret before
-- this migration keeps using it until it refreshes its credentials. The rotation function
-- turns that login off (NOLOGIN, no password) at the first rotation after which neither the
-- current nor the previous version of the secret names it (scripts/dbops/rotation.py), so no
-- deployment loses its metrics on the way.
--
-- RDS-compatible and re-runnable like 0001/0002: roles in DO blocks guarded by pg_roles, then
-- GRANT/ALTER statements that PostgreSQL accepts again without error.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_monitor_a') THEN
        CREATE ROLE psychology_monitor_a LOGIN INHERIT CONNECTION LIMIT 5;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_monitor_b') THEN
        CREATE ROLE psychology_monitor_b LOGIN INHERIT CONNECTION LIMIT 5;
    END IF;
END
$$;

-- Membership passes on pg_monitor (statistics views, pg_stat_statements of every user) and
-- the read access to psychology_ops.schema_migrations.
GRANT psychology_monitor TO psychology_monitor_a;
GRANT psychology_monitor TO psychology_monitor_b;

-- Role settings belong to the login role, not the group: repeat 0002's guard rails.
ALTER ROLE psychology_monitor_a SET default_transaction_read_only = on;
ALTER ROLE psychology_monitor_b SET default_transaction_read_only = on;
ALTER ROLE psychology_monitor_a SET statement_timeout = '15s';
ALTER ROLE psychology_monitor_b SET statement_timeout = '15s';

-- No grant to the migrating user is needed: it creates both roles, and on PostgreSQL 16+ the
-- creator of a role holds ADMIN OPTION on it, which is what ALTER ROLE ... PASSWORD requires.
