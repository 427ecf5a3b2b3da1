-- The Nexmark sources for Flink SQL, one table per event kind, with the wire columns of the
-- event contract (snake_case; date_time and expires as epoch-millisecond numbers).
-- The views at the end turn them into the tables person, auction and bid that the queries
-- read.
--
-- Event time: date_time, watermark date_time - 4 s (as the Flink Nexmark suite's DDL).
--
-- run.py replaces ${SOURCE:<kind>} with the connector options of --source:
--   kafka: 'connector' = 'kafka', 'topic' = '<prefix><kind>' (default prefix nexmark-),
--          'properties.bootstrap.servers' = '<--bootstrap>', 'properties.group.id' = a new
--          group per run, 'scan.startup.mode' = 'earliest-offset',
--          'scan.bounded.mode' = 'latest-offset' (read up to the end offsets present when
--          the job starts, so the job ends once the topics are consumed), 'format' = 'json'
--   files: 'connector' = 'filesystem', 'path' = '<--dir>/<kind>.jsonl', 'format' = 'json'
--          (each file read once; a JSON file is one split, read by one source subtask)

CREATE TABLE person_src (
    id BIGINT,
    name STRING,
    email_address STRING,
    credit_card STRING,
    city STRING,
    state STRING,
    date_time BIGINT,
    extra STRING,
    event_time AS CAST(TO_TIMESTAMP_LTZ(date_time, 3) AS TIMESTAMP(3)),
    WATERMARK FOR event_time AS event_time - INTERVAL '4' SECOND
) WITH (${SOURCE:person});

CREATE TABLE auction_src (
    id BIGINT,
    item_name STRING,
    description STRING,
    initial_bid BIGINT,
    reserve BIGINT,
    date_time BIGINT,
    expires BIGINT,
    seller BIGINT,
    category BIGINT,
    extra STRING,
    event_time AS CAST(TO_TIMESTAMP_LTZ(date_time, 3) AS TIMESTAMP(3)),
    WATERMARK FOR event_time AS event_time - INTERVAL '4' SECOND
) WITH (${SOURCE:auction});

CREATE TABLE bid_src (
    auction BIGINT,
    bidder BIGINT,
    price BIGINT,
    channel STRING,
    url STRING,
    date_time BIGINT,
    extra STRING,
    event_time AS CAST(TO_TIMESTAMP_LTZ(date_time, 3) AS TIMESTAMP(3)),
    WATERMARK FOR event_time AS event_time - INTERVAL '4' SECOND
) WITH (${SOURCE:bid});

-- The tables the queries read: snake_case columns, date_time (and auction.expires) as
-- TIMESTAMP(3) in UTC (run.py sets table.local-time-zone = UTC). Renaming event_time to
-- date_time keeps it the event-time attribute, so the window TVFs accept
-- DESCRIPTOR(date_time).

CREATE VIEW person AS
SELECT id, name, email_address, credit_card, city, state, event_time AS date_time, extra
FROM person_src;

CREATE VIEW auction AS
SELECT id, item_name, description, initial_bid, reserve, event_time AS date_time,
       CAST(TO_TIMESTAMP_LTZ(expires, 3) AS TIMESTAMP(3)) AS expires, seller, category, extra
FROM auction_src;

CREATE VIEW bid AS
SELECT auction, bidder, price, channel, url, event_time AS date_time, extra
FROM bid_src;
