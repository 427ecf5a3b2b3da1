-- q0 in batch (plain DataFusion over the tables' rows): see ../q0.sql.
SELECT auction, bidder, price, date_time, extra
FROM bid
