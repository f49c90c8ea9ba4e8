-- Application roles for the alternating-users rotation strategy.
--
-- psychology_app is a NOLOGIN group role that owns the application's objects. The two LOGIN
-- users are members of it; the rotation function gives one of them a new password while the
-- other keeps working, then swaps them. Passwords are never set here: the rotation code and the
-- migrate function set them from Secrets Manager (a role created without a password cannot log
-- in until then).
--
-- Runs on RDS, where the master user is a member of rds_superuser but not a superuser: roles are
-- created in DO blocks guarded by pg_roles (CREATE ROLE has no IF NOT EXISTS), and everything
-- else is a GRANT/ALTER that PostgreSQL accepts again without error, so re-running is harmless.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_app') THEN
        CREATE ROLE psychology_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_app_a') THEN
        CREATE ROLE psychology_app_a LOGIN INHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'psychology_app_b') THEN
        CREATE ROLE psychology_app_b LOGIN INHERIT;
    END IF;
END
$$;

GRANT psychology_app TO psychology_app_a;
GRANT psychology_app TO psychology_app_b;

-- Whichever user logs in acts as the group role, so every table the application (Django
-- migrations) creates is owned by psychology_app and stays usable after the next rotation
-- switches users.
ALTER ROLE psychology_app_a SET role = 'psychology_app';
ALTER ROLE psychology_app_b SET role = 'psychology_app';

-- The migrating user (the RDS master) joins the group so later migrations can alter the
-- application's objects, and the login users so it may set default privileges for them.
GRANT psychology_app TO CURRENT_USER;
GRANT psychology_app_a TO CURRENT_USER;
GRANT psychology_app_b TO CURRENT_USER;

-- The application works in the public schema (PostgreSQL 15+ no longer lets everyone create there).
GRANT USAGE, CREATE ON SCHEMA public TO psychology_app;

-- Objects created by the migrating user, or by a login user that reset its role, are usable by both.
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLES TO psychology_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO psychology_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO psychology_app;
ALTER DEFAULT PRIVILEGES FOR ROLE psychology_app_a, psychology_app_b IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLES TO psychology_app;
ALTER DEFAULT PRIVILEGES FOR ROLE psychology_app_a, psychology_app_b IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO psychology_app;
ALTER DEFAULT PRIVILEGES FOR ROLE psychology_app_a, psychology_app_b IN SCHEMA public
    GRANT EXECUTE ON FUNCTIONS TO psychology_app;

-- The smoke tests and the rotation test read the migration level with the application's credentials.
GRANT USAGE ON SCHEMA psychology_ops TO psychology_app;
GRANT SELECT ON psychology_ops.schema_migrations TO psychology_app;
