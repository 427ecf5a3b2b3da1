-- The three Nexmark tables read from Kafka topics loaded by
--   weir-bench nexmark-gen --out DIR  and  weir-bench kafka-load --topic nexmark-<table>
-- (see docs/nexmark.md). Same columns and watermark as the generator sources, so the
-- queries run unchanged on either. Bounded at the offsets present at start: run with
-- `weir run --until-done`; drop 'scan.bounded.mode' to keep reading.

CREATE SOURCE person (
    id BIGINT, name TEXT, email_address TEXT, credit_card TEXT, city TEXT, state TEXT,
    date_time TIMESTAMP, extra TEXT,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'kafka', topic = 'nexmark-person', format = 'json',
        'scan.bounded.mode' = 'latest-offset');

CREATE SOURCE auction (
    id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT, reserve BIGINT,
    date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra TEXT,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'kafka', topic = 'nexmark-auction', format = 'json',
        'scan.bounded.mode' = 'latest-offset');

CREATE SOURCE bid (
    auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
    date_time TIMESTAMP, extra TEXT,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (connector = 'kafka', topic = 'nexmark-bid', format = 'json',
        'scan.bounded.mode' = 'latest-offset');
