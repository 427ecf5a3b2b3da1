-- Nexmark q5: hot items. Per 10-second window sliding every 2 seconds (HOP), the auctions
-- with the most bids in that window (all of them on a tie): bid counts per auction and
-- window, joined with the per-window maximum of those counts.
CREATE TABLE nexmark_q5 (
    auction BIGINT,
    num BIGINT
) WITH ('connector' = 'blackhole');

INSERT INTO nexmark_q5
SELECT counts.auction, counts.num
FROM (
    SELECT auction, COUNT(*) AS num, window_start, window_end
    FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
    GROUP BY auction, window_start, window_end
) AS counts
JOIN (
    SELECT MAX(per_auction.num) AS max_num, per_auction.window_start, per_auction.window_end
    FROM (
        SELECT COUNT(*) AS num, window_start, window_end
        FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
        GROUP BY auction, window_start, window_end
    ) AS per_auction
    GROUP BY per_auction.window_start, per_auction.window_end
) AS maxima
ON counts.window_start = maxima.window_start
   AND counts.window_end = maxima.window_end
   AND counts.num >= maxima.max_num;
