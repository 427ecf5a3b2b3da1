"""Check a Flink Nexmark result (run.py --print-results FILE) against a plain-Python reference.

    check.py --query q5 --dir DIR --results FILE

DIR holds the run's input (person.jsonl, auction.jsonl, bid.jsonl, times as epoch
milliseconds). The reference computes each query's final rows straight from the files,
with the semantics written in the q*.sql files (windows aligned to the epoch: TUMBLE 10 s,
HOP 10 s every 2 s; every window closes at the end of the input; no event is late, which
holds for in-order input). Rows are compared as multisets, formatted as run.py writes
them. Prints how many rows matched, or the first differences and exits 1. When
DIR/expected/<query>.jsonl exists (the hand-written fixture testdata/edge has one per
query), the reference must also equal it.

For small inputs only: it holds all events in memory, and q3/q4 are quadratic at worst.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

TUMBLE_MS = 10_000
HOP_SIZE_MS = 10_000
HOP_SLIDE_MS = 2_000


def load(dir_: Path, kind: str) -> list[dict]:
    with open(dir_ / f"{kind}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def row(**cols) -> str:
    """A row as run.py writes it (json.dumps per value; Decimal as its exact text)."""
    return "{" + ", ".join(
        f"{json.dumps(k)}: {str(v) if isinstance(v, Decimal) else json.dumps(v)}" for k, v in cols.items()
    ) + "}"


def tumble_start(t: int) -> int:
    return t - t % TUMBLE_MS


def hop_starts(t: int) -> list[int]:
    last = t - t % HOP_SLIDE_MS
    return [s for s in range(last - HOP_SIZE_MS + HOP_SLIDE_MS, last + 1, HOP_SLIDE_MS) if s <= t < s + HOP_SIZE_MS]


def q0(d: Path) -> list[str]:
    return [
        row(auction=b["auction"], bidder=b["bidder"], price=b["price"], date_time=b["date_time"], extra=b["extra"])
        for b in load(d, "bid")
    ]


def q1(d: Path) -> list[str]:
    return [
        row(
            auction=b["auction"],
            bidder=b["bidder"],
            price=Decimal("0.908") * Decimal(b["price"]),
            date_time=b["date_time"],
            extra=b["extra"],
        )
        for b in load(d, "bid")
    ]


def q2(d: Path) -> list[str]:
    return [row(auction=b["auction"], price=b["price"]) for b in load(d, "bid") if b["auction"] % 123 == 0]


def q3(d: Path) -> list[str]:
    people = defaultdict(list)
    for p in load(d, "person"):
        if p["state"] in ("OR", "ID", "CA"):
            people[p["id"]].append(p)
    return [
        row(name=p["name"], city=p["city"], state=p["state"], id=a["id"])
        for a in load(d, "auction")
        if a["category"] == 10
        for p in people.get(a["seller"], [])
    ]


def q4(d: Path) -> list[str]:
    bids = defaultdict(list)
    for b in load(d, "bid"):
        bids[b["auction"]].append(b)
    finals = defaultdict(list)  # category -> closing prices
    seen = set()
    for a in load(d, "auction"):
        prices = [b["price"] for b in bids.get(a["id"], []) if a["date_time"] <= b["date_time"] <= a["expires"]]
        # GROUP BY a.id, a.category: one closing price per (id, category), over all auction
        # rows with that key (ids are unique in Nexmark; keep the semantics anyway)
        key = (a["id"], a["category"])
        if prices:
            if key in seen:
                raise SystemExit("check.py: q4 reference: duplicate auction id; not supported")
            seen.add(key)
            finals[a["category"]].append(max(prices))
    # Flink's AVG over BIGINT is a BIGINT: the sum divided by the count, truncated (prices
    # are positive, so floor division is the same).
    return [row(category=c, avg_final_price=sum(v) // len(v)) for c, v in finals.items()]


def q5(d: Path) -> list[str]:
    counts: Counter = Counter()
    for b in load(d, "bid"):
        for s in hop_starts(b["date_time"]):
            counts[(s, b["auction"])] += 1
    best: dict[int, int] = {}
    for (s, _), n in counts.items():
        best[s] = max(best.get(s, 0), n)
    return [row(auction=a, num=n) for (s, a), n in counts.items() if n >= best[s]]


def q7(d: Path) -> list[str]:
    bids = load(d, "bid")
    max_price: dict[int, int] = {}
    for b in bids:
        s = tumble_start(b["date_time"])
        max_price[s] = max(max_price.get(s, b["price"]), b["price"])
    return [
        row(auction=b["auction"], bidder=b["bidder"], price=b["price"], date_time=b["date_time"], extra=b["extra"])
        for b in bids
        if b["price"] == max_price[tumble_start(b["date_time"])]
    ]


def q8(d: Path) -> list[str]:
    people = {(p["id"], p["name"], tumble_start(p["date_time"])) for p in load(d, "person")}
    sellers = {(a["seller"], tumble_start(a["date_time"])) for a in load(d, "auction")}
    return [row(id=i, name=n, stime=s) for (i, n, s) in people if (i, s) in sellers]


REFERENCE = {"q0": q0, "q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q7": q7, "q8": q8}


def compare(what: str, want: Counter, got: Counter, query: str) -> bool:
    if want == got:
        return True
    missing = list((want - got).elements())
    extra = list((got - want).elements())
    print(
        f"check.py: {query}: MISMATCH: {what} has {sum(got.values())} rows, expected "
        f"{sum(want.values())}; {len(missing)} missing, {len(extra)} unexpected",
        file=sys.stderr,
    )
    for r in sorted(missing)[:5]:
        print(f"  missing:    {r}", file=sys.stderr)
    for r in sorted(extra)[:5]:
        print(f"  unexpected: {r}", file=sys.stderr)
    return False


def rows_of(path: Path) -> Counter:
    return Counter(line for line in path.read_text().splitlines() if line.strip())


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--query", required=True, choices=sorted(REFERENCE))
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--results", required=True, type=Path)
    a = p.parse_args(argv)
    want = Counter(REFERENCE[a.query](a.dir))
    # A fixture with hand-written expected rows checks the reference itself first.
    expected = a.dir / "expected" / f"{a.query}.jsonl"
    if expected.is_file() and not compare("the reference", rows_of(expected), want, a.query):
        print(f"check.py: {a.query}: the reference disagrees with {expected}", file=sys.stderr)
        return 1
    got = rows_of(a.results)
    if not compare(str(a.results), want, got, a.query):
        return 1
    also = f" and to {expected}" if expected.is_file() else ""
    print(f"check.py: {a.query}: {sum(got.values())} rows, equal to the reference{also}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
