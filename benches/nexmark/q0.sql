-- Nexmark q0: pass-through. Every bid as it is: measures the source, the engine's
-- per-batch overhead and the sink, with no computation.
-- reads: bid
-- result: q0
-- window_end: none

CREATE MATERIALIZED VIEW q0 AS
SELECT auction, bidder, price, date_time, extra
FROM bid;
