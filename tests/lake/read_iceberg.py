"""Read an Iceberg table with pyiceberg and print it as one JSON object: the independent
reader Weir's Iceberg tests check tables with (scripts/pyiceberg.sh read ...).

The table comes from a filesystem (Hadoop-style) table directory, which pyiceberg's
StaticTable opens through metadata/version-hint.text, or from a SQL catalog.

Output: {"snapshots": [{"id", "parent", "sequence", "operation", "summary"}...] oldest first,
"schema": [[id, name, type, required]...], "partition_spec": [[source_id, name, transform]...],
"files": number of data files in the current snapshot, "rows": [[...], ...] sorted, with
timestamps as epoch milliseconds and dates as days since the epoch}.
"""

import argparse
import datetime
import json
import sys


def to_json(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(value.timestamp() * 1000)
    if isinstance(value, datetime.date):
        return (value - datetime.date(1970, 1, 1)).days
    return value


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--table-dir", help="a filesystem catalog's table directory")
    p.add_argument("--sql-uri", help="SQLAlchemy URI of a SQL catalog (postgresql+psycopg2://...)")
    p.add_argument("--catalog-name", default="weir")
    p.add_argument("--table", help="namespace.table in the SQL catalog")
    p.add_argument("--warehouse", default="", help="the SQL catalog's warehouse")
    p.add_argument("--filter", default=None,
                   help="a row filter (pyiceberg's syntax); files are skipped by their bounds")
    p.add_argument("--prop", action="append", default=[], metavar="KEY=VALUE",
                   help="a FileIO property (s3.endpoint=..., s3.access-key-id=...)")
    args = p.parse_args()
    props = dict(kv.split("=", 1) for kv in args.prop)

    if args.table_dir:
        from pyiceberg.table import StaticTable

        table = StaticTable.from_metadata(args.table_dir, properties=props)
    elif args.sql_uri and args.table:
        from pyiceberg.catalog.sql import SqlCatalog

        catalog = SqlCatalog(
            args.catalog_name,
            uri=args.sql_uri,
            warehouse=args.warehouse,
            init_catalog_tables="false",
            **props,
        )
        table = catalog.load_table(args.table)
    else:
        p.error("give --table-dir, or --sql-uri and --table")

    md = table.metadata
    snapshots = sorted(md.snapshots, key=lambda s: s.sequence_number or 0)
    out = {
        "snapshots": [
            {
                "id": s.snapshot_id,
                "parent": s.parent_snapshot_id,
                "sequence": s.sequence_number,
                "operation": str(s.summary.operation.value) if s.summary else None,
                "summary": dict(s.summary.additional_properties) if s.summary else {},
            }
            for s in snapshots
        ],
        "schema": [
            [f.field_id, f.name, str(f.field_type), f.required] for f in table.schema().fields
        ],
        "partition_spec": [
            [f.source_id, f.name, str(f.transform)] for f in table.spec().fields
        ],
    }
    if table.current_snapshot() is None:
        out["files"] = 0
        out["rows"] = []
    else:
        scan = table.scan(row_filter=args.filter) if args.filter else table.scan()
        out["files"] = sum(1 for _ in scan.plan_files())
        data = scan.to_arrow()
        names = data.column_names
        cols = [data.column(n).to_pylist() for n in names]
        rows = [[to_json(c[i]) for c in cols] for i in range(data.num_rows)]
        rows.sort(key=lambda r: json.dumps(r))
        out["columns"] = names
        out["rows"] = rows
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
