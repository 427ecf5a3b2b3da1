-- Nexmark q7: highest bid. Per 10-second tumbling window, the bids with the window's
-- highest price (all of them on a tie).
-- PLACEHOLDER formulation: the windowed maximum joined back to the bids.
-- reads: bid
-- result: q7
-- window_end: window_end

CREATE MATERIALIZED VIEW q7_max AS
SELECT window_start, window_end, max(price) AS max_price
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
GROUP BY window_start, window_end;

CREATE MATERIALIZED VIEW q7 AS
SELECT b.auction, b.bidder, b.price, b.date_time, b.extra, m.window_start, m.window_end
FROM bid AS b
JOIN q7_max AS m
  ON b.price = m.max_price AND b.date_time >= m.window_start AND b.date_time < m.window_end;
