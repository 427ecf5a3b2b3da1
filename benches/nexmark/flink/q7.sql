-- Nexmark q7: highest bid. Per 10-second tumbling window, the maximum price; then every bid
-- of that window with that price (all of them on a tie). The windowed maximum is joined
-- back to the bids with an unwindowed join: every bid stays in the join's state.
--
-- Deviation from the Flink suite: it matches a bid to a window with
-- `date_time BETWEEN window_end - INTERVAL '10' SECOND AND window_end`, both ends included,
-- so a bid at exactly window_end is also matched against the window that ends there. Here
-- the bid must lie in the window, [window_start, window_end), as in Weir's q7; the two
-- differ only when a window's top price recurs at the next window's first millisecond.
CREATE TABLE nexmark_q7 (
    auction BIGINT,
    bidder BIGINT,
    price BIGINT,
    date_time TIMESTAMP(3),
    extra STRING
) WITH ('connector' = 'blackhole');

INSERT INTO nexmark_q7
SELECT b.auction, b.bidder, b.price, b.date_time, b.extra
FROM bid AS b
JOIN (
    SELECT MAX(price) AS max_price, window_start, window_end
    FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
    GROUP BY window_start, window_end
) AS w
ON b.price = w.max_price
WHERE b.date_time >= w.window_start AND b.date_time < w.window_end;
