-- Dedicated logins for the monitoring host's backup and restore drill, so the host never needs
-- the RDS master credentials. Each is a NOLOGIN group with two alternating login users, rotated
-- like the monitoring users (0004) from their own secrets (psychology-api/<stack>/database/backup
-- and .../database/drill); no password is set here.
--
-- psychology_backup holds pg_read_all_data (PostgreSQL 14+; rds_superuser may grant it on RDS):
-- pg_dump reads every table and sequence, and its users are read-only, so the nightly backup can
-- read but never change anything.
--
-- psychology_drill may create databases (CREATEDB) and nothing else: it reads no live data. Its
-- users act as the group (SET role), so the scratch database the drill creates is owned by
-- psychology_drill and whichever user runs the next drill may drop it. CREATEDB is a role
-- attribute, not inherited: the group carries it and the users become the group at login.
--
-- CONNECTION LIMITs are the monitoring host's share of max_connections
-- (components/connection_budget.py). Re-runnable like 0001-0004.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_backup') THEN
        CREATE ROLE psychology_backup NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_backup_a') THEN
        CREATE ROLE psychology_backup_a LOGIN INHERIT CONNECTION LIMIT 2;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_backup_b') THEN
        CREATE ROLE psychology_backup_b LOGIN INHERIT CONNECTION LIMIT 2;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_drill') THEN
        CREATE ROLE psychology_drill NOLOGIN CREATEDB;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_drill_a') THEN
        CREATE ROLE psychology_drill_a LOGIN INHERIT CONNECTION LIMIT 2;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_drill_b') THEN
        CREATE ROLE psychology_drill_b LOGIN INHERIT CONNECTION LIMIT 2;
    END IF;
END
$$;

GRANT pg_read_all_data TO psychology_backup;
GRANT psychology_backup TO psychology_backup_a;
GRANT psychology_backup TO psychology_backup_b;
ALTER ROLE psychology_backup_a SET default_transaction_read_only = on;
ALTER ROLE psychology_backup_b SET default_transaction_read_only = on;

GRANT psychology_drill TO psychology_drill_a;
GRANT psychology_drill TO psychology_drill_b;
ALTER ROLE psychology_drill_a SET role = 'psychology_drill';
ALTER ROLE psychology_drill_b SET role = 'psychology_drill';
