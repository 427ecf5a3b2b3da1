-- Nexmark q5: hot items. For every 10-second window sliding every 2 seconds, the auctions
-- with the most bids in that window (all of them on a tie), with their bid count.
-- The count per auction and window is a HOP aggregate (each bid folded once into its
-- 2-second pane; a window merges its five panes when it closes). The rank over that
-- aggregate runs in the part of the plan above the aggregate, which Weir executes once
-- per closed window over that window's groups: so `rank() <= 1` is the standard query's
-- "count = the window's maximum count" without a second aggregate and a join.
-- reads: bid
-- result: q5
-- window_end: window_end

CREATE MATERIALIZED VIEW q5 AS
SELECT auction, num, window_start, window_end
FROM (
    SELECT auction, count(*) AS num, window_start, window_end,
           rank() OVER (PARTITION BY window_start ORDER BY count(*) DESC) AS rk
    FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
    GROUP BY auction, window_start, window_end
) AS ranked
WHERE rk <= 1;
