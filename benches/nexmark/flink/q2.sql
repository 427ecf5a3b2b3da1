-- Nexmark q2: selection. The bids on every 123rd auction (the Flink suite's filter; the
-- original asked for five fixed auction ids, which yields almost nothing).
CREATE TABLE nexmark_q2 (
    auction BIGINT,
    price BIGINT
) WITH ('connector' = 'blackhole');

INSERT INTO nexmark_q2
SELECT auction, price
FROM bid
WHERE MOD(auction, 123) = 0;
