-- Per-symbol OHLC-style statistics every 10 seconds. People watch them live on the
-- dashboard, so the view emits early results: every half second, each open window whose
-- trades changed comes out as it stands (is_final = false), and once more when it closes
-- (is_final = true). See docs/windows.md, "Early results".
CREATE MATERIALIZED VIEW symbol_stats AS
SELECT window_start, window_end, symbol,
       first_value(price ORDER BY ts) AS open,
       max(price)                     AS high,
       min(price)                     AS low,
       last_value(price ORDER BY ts)  AS close,
       sum(volume)                    AS volume,
       count(*)                       AS trades,
       sum(price * volume) / sum(volume) AS vwap
FROM TUMBLE(ticks, ts, INTERVAL '10' SECOND)
GROUP BY window_start, window_end, symbol
EMIT EVERY INTERVAL '500' MILLISECOND;

-- The lake keeps each window once, final: the closed windows of symbol_stats, without
-- the early rows and without the is_final column.
CREATE MATERIALIZED VIEW symbol_stats_closed AS
SELECT window_start, window_end, symbol, open, high, low, close, volume, trades, vwap
FROM symbol_stats
WHERE is_final;

CREATE SINK symbol_stats_lake FROM symbol_stats_closed WITH (
    connector = 'parquet', path = 'data/lake/symbol_stats', 'partition.by' = 'hour'
);

-- Every 50 trades of a symbol (a count window, in event-time order): their
-- volume-weighted price and how long they took to happen.
CREATE MATERIALIZED VIEW vwap_per_50_trades AS
SELECT symbol, window_index,
       sum(price * volume) / sum(volume) AS vwap,
       sum(volume)                       AS volume,
       min(ts)                           AS first_trade,
       max(ts)                           AS last_trade
FROM COUNT_WINDOW(ticks, symbol, ts, 50)
GROUP BY symbol, window_index;
