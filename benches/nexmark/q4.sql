-- Nexmark q4: average closing price per category, per 10 seconds of auction expiry.
-- The closing price of an auction is its highest bid made while it was open (the bid's
-- date_time between the auction's date_time and expires, both ends included), known once
-- the auction has expired.
--
-- Deviation from the standard query: Flink's q4 keeps one running average per category
-- over the whole run (an unwindowed aggregate that updates its rows). Weir has no
-- unwindowed aggregates, so the closing prices are grouped by the 10-second tumbling
-- window of the auctions' `expires`: each result row is the average over the auctions of
-- one category that expired in one window, emitted once, when that window closes. The rows
-- also carry the sum and the count, so the standard's whole-run average per category is
-- sum(sum_final_price) / sum(auctions) over all windows.
--
-- Why windows over `expires` are exact: a bid matches only while date_time <= expires, and
-- the watermark (date_time - 4 s) passes a window's end only after every bid that could
-- still fall inside an auction expiring in it.
--
-- The join of auctions with their bids (q4_bids) is unwindowed: each side's rows (the
-- auction's id, category, date_time and expires; the bid's auction, price and date_time)
-- stay in its state for the whole run, as in the standard query.
-- reads: auction, bid
-- result: q4
-- window_end: window_end

CREATE MATERIALIZED VIEW q4_bids AS
SELECT a.id, a.category, a.expires, b.price
FROM auction AS a
JOIN bid AS b
  ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires;

CREATE MATERIALIZED VIEW q4_closing AS
SELECT window_start, window_end, id, category, max(price) AS final_price
FROM TUMBLE(q4_bids, expires, INTERVAL '10' SECOND)
GROUP BY window_start, window_end, id, category;

CREATE MATERIALIZED VIEW q4 AS
SELECT window_start, window_end, category, avg(final_price) AS avg_final_price,
       sum(final_price) AS sum_final_price, count(*) AS auctions
FROM TUMBLE(q4_closing, window_start, INTERVAL '10' SECOND)
GROUP BY window_start, window_end, category;
