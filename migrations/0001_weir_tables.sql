-- Weir's own tables, in their own schema. Applied by weir_connectors::postgres::migrate
-- (sqlx migrations, embedded in the binary): by the server at startup when a database is
-- configured, and by every Postgres sink when it first connects.

CREATE SCHEMA IF NOT EXISTS weir;

-- SQL submitted over REST, in the order it was accepted.
CREATE TABLE IF NOT EXISTS weir.statements (
    seq bigserial PRIMARY KEY,
    sql text NOT NULL,
    submitted_at timestamptz DEFAULT now()
);

-- Each Postgres sink's last checkpoint: the epoch and the rows it had written by then,
-- updated in the same transaction as the rows themselves.
CREATE TABLE IF NOT EXISTS weir.sink_progress (
    sink text PRIMARY KEY,
    epoch bigint NOT NULL,
    rows bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
