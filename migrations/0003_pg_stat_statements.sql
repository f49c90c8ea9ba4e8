-- Query statistics for the slow-query dashboards and postgres_exporter. The library must be in
-- shared_preload_libraries (the RDS parameter group loads it); the extension exposes the view
-- in this database. rds_superuser may create it on RDS.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
