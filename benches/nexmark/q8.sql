-- Nexmark q8: monitor new users. The people who registered and created an auction in the
-- same 10-second tumbling window: the distinct (id, name) of each person window joined
-- with the distinct sellers of each auction window on id = seller and the window bounds.
-- Both inputs of the join are windowed views and window_start is a join key, so a stored
-- row is evicted once the other side's watermark has passed its window: the join's state
-- holds about one window of each side.
-- reads: person, auction
-- result: q8
-- window_end: stime + 10s

CREATE MATERIALIZED VIEW q8_person AS
SELECT id, name, window_start, window_end
FROM TUMBLE(person, date_time, INTERVAL '10' SECOND)
GROUP BY id, name, window_start, window_end;

CREATE MATERIALIZED VIEW q8_seller AS
SELECT seller, window_start, window_end
FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND)
GROUP BY seller, window_start, window_end;

CREATE MATERIALIZED VIEW q8 AS
SELECT p.id, p.name, p.window_start AS stime
FROM q8_person AS p
JOIN q8_seller AS a
  ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end;
