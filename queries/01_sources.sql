-- The demo's event streams, from Weir's built-in generators. Event time follows the wall
-- clock, so the one-minute windows below close once a minute.

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
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (
    connector = 'generator',
    kind = 'downloads',
    'rows.per.second' = '2000',
    'max.out.of.orderness' = '1s',
    seed = '7'
);

CREATE SOURCE ticks (
    symbol TEXT NOT NULL,
    price  DOUBLE,
    volume BIGINT,
    ts     TIMESTAMP NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (
    connector = 'generator',
    kind = 'ticks',
    'rows.per.second' = '500',
    seed = '11'
);
