-- q4 in batch (plain DataFusion over the tables' rows): see ../q4.sql. The closing price
-- per auction, then the average per category and 10-second window of expiry (date_bin
-- aligns to the epoch, as TUMBLE does).
WITH closing AS (
    SELECT a.id, a.category, a.expires, max(b.price) AS final_price
    FROM auction AS a
    JOIN bid AS b ON a.id = b.auction
    WHERE b.date_time >= a.date_time AND b.date_time <= a.expires
    GROUP BY a.id, a.category, a.expires
), binned AS (
    SELECT date_bin(INTERVAL '10' SECOND, expires) AS window_start, category, final_price
    FROM closing
)
SELECT window_start, window_start + INTERVAL '10' SECOND AS window_end, category,
       avg(final_price) AS avg_final_price, sum(final_price) AS sum_final_price,
       count(*) AS auctions
FROM binned
GROUP BY window_start, category
