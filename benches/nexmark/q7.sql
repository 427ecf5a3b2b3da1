-- Nexmark q7: highest bid. Per 10-second tumbling window, the bids with the window's
-- highest price (all of them on a tie): a top-N per window over the raw bids, so each
-- window holds only its best bids so far, not every bid (docs/windows.md, "Top-N per
-- window"). The suite writes it as the windowed maximum joined back to the bids; the
-- result is the same.
-- reads: bid
-- result: q7
-- window_end: window_end

CREATE MATERIALIZED VIEW q7 AS
SELECT auction, bidder, price, date_time, extra, window_start, window_end
FROM (
    SELECT auction, bidder, price, date_time, extra, window_start, window_end,
           RANK() OVER (PARTITION BY window_start ORDER BY price DESC) AS price_rank
    FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
)
WHERE price_rank = 1;
