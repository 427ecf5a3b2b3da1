-- Nexmark q8: monitor new users. People who registered and created an auction in the same
-- 10-second tumbling window: distinct (id, name) per person window joined with distinct
-- sellers per auction window on id = seller and the window bounds.
CREATE TABLE nexmark_q8 (
    id BIGINT,
    name STRING,
    stime TIMESTAMP(3)
) WITH ('connector' = 'blackhole');

INSERT INTO nexmark_q8
SELECT p.id, p.name, p.window_start AS stime
FROM (
    SELECT id, name, window_start, window_end
    FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
    GROUP BY id, name, window_start, window_end
) AS p
JOIN (
    SELECT seller, window_start, window_end
    FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
    GROUP BY seller, window_start, window_end
) AS a
ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end;
