-- q8 in batch (plain DataFusion over the tables' rows): see ../q8.sql. Distinct people and
-- sellers per 10-second window (date_bin), joined on id = seller and the window.
WITH p AS (
    SELECT DISTINCT id, name, date_bin(INTERVAL '10' SECOND, date_time) AS window_start
    FROM person
), a AS (
    SELECT DISTINCT seller, date_bin(INTERVAL '10' SECOND, date_time) AS window_start
    FROM auction
)
SELECT p.id, p.name, p.window_start AS stime
FROM p JOIN a ON p.id = a.seller AND p.window_start = a.window_start
