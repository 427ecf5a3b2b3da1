-- Per-symbol OHLC-style statistics every 10 seconds.
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
EMIT ON WINDOW CLOSE;

CREATE SINK symbol_stats_lake FROM symbol_stats WITH (
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
