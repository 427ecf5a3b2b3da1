#!/usr/bin/env python3
"""DuckDB's batch answer to the region-health view, for the side-by-side in BENCHMARKS.md.

The same GROUP BY as `weir-bench throughput` (benches/src/main.rs, HEALTH_VIEW) over the
same JSON-lines or Parquet file, computed once in batch: per 1-minute window and region,
downloads, failures, average speed and longest duration. The columns are declared, as
Weir's source declares them, so DuckDB does not sample the file to guess types.

    pip install duckdb
    python3 benches/duckdb/region_health.py --input /tmp/dl2m.jsonl --threads 2

Prints one JSON line: rows in, result rows, seconds inside DuckDB. Time the whole process
from outside (farm-bench, /usr/bin/time) to compare with a whole `weir-bench` run.
"""

import argparse
import json
import time

import duckdb

COLUMNS = {
    "event_id": "VARCHAR",
    "ts": "TIMESTAMP",
    "content_id": "VARCHAR",
    "content_type": "VARCHAR",
    "region": "VARCHAR",
    "device_type": "VARCHAR",
    "status": "VARCHAR",
    "duration_seconds": "DOUBLE",
    "speed_mbps": "DOUBLE",
    "error_code": "VARCHAR",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--format", choices=["json", "parquet"], default="json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    path = args.input.replace("'", "''")
    if args.format == "json":
        cols = ", ".join(f"'{k}': '{v}'" for k, v in COLUMNS.items())
        scan = f"read_json('{path}', format = 'newline_delimited', columns = {{{cols}}})"
    else:
        scan = f"read_parquet('{path}')"
    start = time.monotonic()
    rows = con.execute(
        f"""
        SELECT time_bucket(INTERVAL '1 minute', ts) AS window_start,
               region,
               count(*) AS downloads,
               count(*) FILTER (WHERE status = 'failed') AS failures,
               avg(speed_mbps) AS avg_speed_mbps,
               max(duration_seconds) AS max_duration_s,
               sum(count(*)) OVER () AS rows_in
        FROM {scan}
        GROUP BY ALL
        """
    ).fetchall()
    seconds = time.monotonic() - start
    print(
        json.dumps(
            {
                "engine": "duckdb",
                "version": duckdb.__version__,
                "threads": args.threads,
                "rows_in": int(rows[0][-1]) if rows else 0,
                "result_rows": len(rows),
                "seconds": round(seconds, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
