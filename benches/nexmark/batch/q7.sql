-- q7 in batch (plain DataFusion over the tables' rows): see ../q7.sql. The maximum price
-- per 10-second window (date_bin), joined back to the bids of that window.
WITH maxima AS (
    SELECT date_bin(INTERVAL '10' SECOND, date_time) AS window_start, max(price) AS max_price
    FROM bid
    GROUP BY 1
)
SELECT b.auction, b.bidder, b.price, b.date_time, b.extra, m.window_start,
       m.window_start + INTERVAL '10' SECOND AS window_end
FROM bid AS b
JOIN maxima AS m
  ON b.price = m.max_price
 AND b.date_time >= m.window_start AND b.date_time < m.window_start + INTERVAL '10' SECOND
