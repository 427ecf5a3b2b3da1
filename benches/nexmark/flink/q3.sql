-- Nexmark q3: local item suggestion. Sellers in Oregon, Idaho or California with their
-- auctions in category 10: an unwindowed inner join of auction and person (state kept for
-- both sides for the whole run).
CREATE TABLE nexmark_q3 (
    name STRING,
    city STRING,
    state STRING,
    id BIGINT
) WITH ('connector' = 'blackhole');

INSERT INTO nexmark_q3
SELECT p.name, p.city, p.state, a.id
FROM auction AS a
JOIN person AS p ON a.seller = p.id
WHERE a.category = 10 AND p.state IN ('OR', 'ID', 'CA');
