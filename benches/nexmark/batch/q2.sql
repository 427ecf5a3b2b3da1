-- q2 in batch (plain DataFusion over the tables' rows): see ../q2.sql.
SELECT auction, price
FROM bid
WHERE auction % 123 = 0
