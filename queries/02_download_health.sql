-- Per-minute download health by region: volume, failures, speed.
CREATE MATERIALIZED VIEW region_health AS
SELECT window_start, window_end, region,
       count(*)                                  AS downloads,
       count(*) FILTER (WHERE status = 'failed') AS failures,
       avg(speed_mbps)                           AS avg_speed_mbps,
       max(duration_seconds)                     AS max_duration_s,
       approx_distinct(content_id)               AS distinct_content
FROM TUMBLE(downloads, ts, INTERVAL '1' MINUTE)
GROUP BY window_start, window_end, region
EMIT ON WINDOW CLOSE;

-- The ten most downloaded pieces of content each minute (ORDER BY and LIMIT apply per
-- closed window).
CREATE MATERIALIZED VIEW top_content AS
SELECT window_start, window_end, content_id, content_type, count(*) AS downloads
FROM TUMBLE(downloads, ts, INTERVAL '1' MINUTE)
WHERE status = 'success'
GROUP BY window_start, window_end, content_id, content_type
ORDER BY downloads DESC, content_id
LIMIT 10
EMIT ON WINDOW CLOSE;

-- The three slowest successful downloads of each minute in each region: a top-N over the
-- raw events (each open minute keeps only its three slowest per region so far, see
-- docs/windows.md).
CREATE MATERIALIZED VIEW slowest_downloads AS
SELECT window_start, window_end, region, event_id, content_id, speed_mbps, speed_rank
FROM (
    SELECT window_start, window_end, region, event_id, content_id, speed_mbps,
           ROW_NUMBER() OVER (PARTITION BY window_start, region
                              ORDER BY speed_mbps ASC NULLS LAST, event_id) AS speed_rank
    FROM TUMBLE(downloads, ts, INTERVAL '1' MINUTE)
    WHERE status = 'success'
)
WHERE speed_rank <= 3;

-- Alert when a region's error rate goes over 5% in a minute.
CREATE MATERIALIZED VIEW download_alerts AS
SELECT window_start, region, downloads, failures,
       round(failures * 100.0 / downloads, 2) AS error_rate_pct
FROM region_health
WHERE failures > 0.05 * downloads;

CREATE SINK region_health_lake FROM region_health WITH (
    connector = 'parquet', path = 'data/lake/region_health', 'partition.by' = 'day'
);
CREATE SINK top_content_lake FROM top_content WITH (
    connector = 'parquet', path = 'data/lake/top_content', 'partition.by' = 'day'
);
CREATE SINK download_alerts_lake FROM download_alerts WITH (
    connector = 'parquet', path = 'data/lake/download_alerts'
);

-- Totals per device type since the start, updated as downloads arrive: an updating view
-- (an aggregate without a window, docs/updating.md). Its rows change in place on the
-- dashboard and through the REST API.
CREATE MATERIALIZED VIEW device_totals AS
SELECT device_type,
       count(*)                                  AS downloads,
       count(*) FILTER (WHERE status = 'failed') AS failures,
       avg(speed_mbps)                           AS avg_speed_mbps
FROM downloads
GROUP BY device_type;
