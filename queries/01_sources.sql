-- The demo's event streams, read from Kafka topics. With no [kafka] bootstrap.servers
-- configured, `weir run` starts an embedded Kafka-protocol broker and fills 'downloads' and
-- 'ticks' from the built-in generators through a real producer (see the README); set
-- [kafka] bootstrap.servers in weir.toml to read your own cluster instead. Event time
-- follows the wall clock, so the one-minute windows below close once a minute.

CREATE SOURCE downloads (
    event_id         TEXT NOT NULL,
    ts               TIMESTAMP NOT NULL,
    content_id       TEXT,
    content_type     TEXT,
    region           TEXT,
    device_type      TEXT,
    status           TEXT,
    duration_seconds DOUBLE,
    speed_mbps       DOUBLE,
    error_code       TEXT,
    kafka_partition  INT METADATA FROM 'partition',
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (
    connector = 'kafka',
    topic = 'downloads',
    format = 'json'
);

CREATE SOURCE ticks (
    symbol TEXT NOT NULL,
    price  DOUBLE,
    volume BIGINT,
    ts     TIMESTAMP NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (
    connector = 'kafka',
    topic = 'ticks',
    format = 'json'
);
