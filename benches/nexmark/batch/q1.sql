-- q1 in batch (plain DataFusion over the tables' rows): see ../q1.sql.
SELECT auction, bidder, 0.908 * price AS price, date_time, extra
FROM bid
