-- PostgreSQL rights of a deployment: one login role per service that uses the database
-- (actors have none). Applied by `cartridge provision` as the database's owner (or a
-- superuser), which first creates each role with its password (`<SERVICE>_PASSWORD`);
-- idempotent. {ingest}, {trainer}, {evaluator}, {web} are the role names and {database}
-- the database, as quoted identifiers.
--
-- Who owns what: ingest owns the replay (the transitions table, its partitions, the batch
-- ledger, the record of dropped partitions). It creates them at start-up (the idempotent
-- migrations) and, while running, creates partitions ahead of the sequence and drops the
-- oldest (retention): DDL only a table's owner may do, so a separate migration role
-- would still have to lend ingest its ownership. The evaluator owns its own three tables
-- (evaluations, rating_games, serving). The readers may create nothing: the trainer and
-- the web page skip the migrations and read what the owners made.

-- Nobody else connects, nobody else creates tables.
REVOKE ALL ON DATABASE {database} FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {ingest};
GRANT CONNECT ON DATABASE {database} TO {trainer}, {evaluator}, {web};
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- The owners create their tables (ingest's temporary staging table needs TEMPORARY).
GRANT USAGE, CREATE ON SCHEMA public TO {ingest}, {evaluator};

-- The trainer reads every table ingest creates (the transitions table is read through
-- its parent, so partitions need no grant of their own); the web page reads the
-- evaluator's tables. Default privileges: the tables do not exist yet when this runs.
GRANT USAGE ON SCHEMA public TO {trainer}, {web};
ALTER DEFAULT PRIVILEGES FOR ROLE {ingest} IN SCHEMA public GRANT SELECT ON TABLES TO {trainer};
ALTER DEFAULT PRIVILEGES FOR ROLE {evaluator} IN SCHEMA public GRANT SELECT ON TABLES TO {web};
