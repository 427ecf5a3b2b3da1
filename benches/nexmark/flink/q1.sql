-- Nexmark q1: currency conversion. Every bid with its price in euros (dollars * 0.908).
CREATE TABLE nexmark_q1 (
    auction BIGINT,
    bidder BIGINT,
    price DECIMAL(23, 3),
    date_time TIMESTAMP(3),
    extra STRING
) WITH ('connector' = 'blackhole');

INSERT INTO nexmark_q1
SELECT auction, bidder, 0.908 * price AS price, date_time, extra
FROM bid;
