-- q5 in batch (plain DataFusion over the tables' rows): see ../q5.sql. HOP expanded by
-- hand: a bid in the 2-second pane starting at p is in the five 10-second windows starting
-- at p, p - 2 s, ..., p - 8 s; the auctions whose count equals the window's maximum count.
WITH hops AS (
    SELECT b.auction,
           date_bin(INTERVAL '2' SECOND, b.date_time) - o.back AS window_start
    FROM bid AS b
    CROSS JOIN (VALUES (INTERVAL '0' SECOND), (INTERVAL '2' SECOND), (INTERVAL '4' SECOND),
                       (INTERVAL '6' SECOND), (INTERVAL '8' SECOND)) AS o(back)
), counts AS (
    SELECT auction, window_start, count(*) AS num
    FROM hops
    GROUP BY auction, window_start
), maxima AS (
    SELECT window_start, max(num) AS max_num
    FROM counts
    GROUP BY window_start
)
SELECT c.auction, c.num, c.window_start, c.window_start + INTERVAL '10' SECOND AS window_end
FROM counts AS c
JOIN maxima AS m ON c.window_start = m.window_start AND c.num = m.max_num
