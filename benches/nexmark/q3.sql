-- Nexmark q3: local item suggestion. Sellers living in Oregon, Idaho or California, with
-- each of their auctions in category 10: a stream-stream join of auction and person on
-- seller = id. Unwindowed, as in the standard query: each side's filtered rows
-- (auctions of category 10, people of the three states) stay in the join's state for the
-- whole run, so a person matches auctions created before or after they registered.
-- reads: person, auction
-- result: q3
-- window_end: none

CREATE MATERIALIZED VIEW q3 AS
SELECT p.name, p.city, p.state, a.id
FROM auction AS a
JOIN person AS p ON a.seller = p.id
WHERE a.category = 10 AND p.state IN ('OR', 'ID', 'CA');
