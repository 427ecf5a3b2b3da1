-- Nexmark q4: average closing price per category. The closing price of an auction is its
-- highest bid made while it was open (date_time between the auction's date_time and expires,
-- both ends included); then the average of those per category. Unwindowed: the result is a
-- changelog (updates as bids arrive), its final state one row per category. AVG of a
-- BIGINT is a BIGINT in Flink (the fraction is dropped).
CREATE TABLE nexmark_q4 (
    category BIGINT,
    avg_final_price BIGINT
) WITH ('connector' = 'blackhole');

INSERT INTO nexmark_q4
SELECT closing.category, AVG(closing.final_price) AS avg_final_price
FROM (
    SELECT a.id, a.category, MAX(b.price) AS final_price
    FROM auction AS a
    JOIN bid AS b ON a.id = b.auction
    WHERE b.date_time BETWEEN a.date_time AND a.expires
    GROUP BY a.id, a.category
) AS closing
GROUP BY closing.category;
