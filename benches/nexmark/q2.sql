-- Nexmark q2: selection. The bids on every 123rd auction (the Flink and Feldera filter;
-- the original's five fixed auction ids select almost nothing).
-- reads: bid
-- result: q2
-- window_end: none

CREATE MATERIALIZED VIEW q2 AS
SELECT auction, price
FROM bid
WHERE auction % 123 = 0;
