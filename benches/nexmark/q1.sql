-- Nexmark q1: currency conversion. Every bid with its price converted from dollars to
-- euros (price * 0.908). The result is a DOUBLE (Flink's suite gets DECIMAL(23, 3));
-- rounded to three decimals the two agree.
-- reads: bid
-- result: q1
-- window_end: none

CREATE MATERIALIZED VIEW q1 AS
SELECT auction, bidder, 0.908 * price AS price, date_time, extra
FROM bid;
