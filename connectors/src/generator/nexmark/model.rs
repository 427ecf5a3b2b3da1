//! The arithmetic of the Nexmark event stream: which event id is which kind of event, the
//! id formulas, event time, the out-of-order permutation, and where the rows of one table
//! sit in the stream. Pure functions of the event number, so any row can be generated
//! without the ones before it.

use super::super::rng::SplitMix64;

/// Of every `TOTAL_PROPORTION` consecutive event ids, this many are people, auctions, bids.
pub(crate) const PERSON_PROPORTION: u64 = 1;
pub(crate) const AUCTION_PROPORTION: u64 = 3;
pub(crate) const BID_PROPORTION: u64 = 46;
pub(crate) const TOTAL_PROPORTION: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;

pub(crate) const FIRST_PERSON_ID: i64 = 1000;
pub(crate) const FIRST_AUCTION_ID: i64 = 1000;
pub(crate) const FIRST_CATEGORY_ID: i64 = 10;
pub(crate) const NUM_CATEGORIES: u64 = 5;
/// Ids a random pick may run ahead of the last person or auction created.
pub(crate) const PERSON_ID_LEAD: u64 = 10;
pub(crate) const AUCTION_ID_LEAD: u64 = 10;
/// Hot sellers, bidders and auctions are the first of each group of this many ids.
pub(crate) const HOT_GROUP: i64 = 100;
/// P(hot) = 1 - 1 / ratio.
pub(crate) const HOT_AUCTION_RATIO: u64 = 2;
pub(crate) const HOT_SELLERS_RATIO: u64 = 4;
pub(crate) const HOT_BIDDERS_RATIO: u64 = 4;
pub(crate) const NUM_ACTIVE_PEOPLE: u64 = 1000;
pub(crate) const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;
/// The multiplier of the out-of-order permutation within a group.
pub(crate) const OUT_OF_ORDER_MULTIPLIER: u64 = 953;

/// The three Nexmark tables (event kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Person,
    Auction,
    Bid,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Person, Table::Auction, Table::Bid];

    pub fn name(self) -> &'static str {
        match self {
            Table::Person => "person",
            Table::Auction => "auction",
            Table::Bid => "bid",
        }
    }

    pub fn parse(s: &str) -> Option<Table> {
        Table::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The kind of event `id` is: of each 50 ids, offset 0 a person, 1..=3 auctions, the
    /// rest bids.
    #[inline]
    pub(crate) fn of_event(id: u64) -> Table {
        let rem = id % TOTAL_PROPORTION;
        if rem < PERSON_PROPORTION {
            Table::Person
        } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
            Table::Auction
        } else {
            Table::Bid
        }
    }

    /// Offset of this table's first id within each block of 50, and its ids per block.
    #[inline]
    fn span(self) -> (u64, u64) {
        match self {
            Table::Person => (0, PERSON_PROPORTION),
            Table::Auction => (PERSON_PROPORTION, AUCTION_PROPORTION),
            Table::Bid => (PERSON_PROPORTION + AUCTION_PROPORTION, BID_PROPORTION),
        }
    }

    /// How many event ids below `x` are of this table.
    #[inline]
    pub(crate) fn ids_below(self, x: u64) -> u64 {
        let (lo, per) = self.span();
        let rem = x % TOTAL_PROPORTION;
        (x / TOTAL_PROPORTION) * per + rem.saturating_sub(lo).min(per)
    }

    /// The `j`-th event id (from 0) of this table.
    #[inline]
    pub(crate) fn nth_id(self, j: u64) -> u64 {
        let (lo, per) = self.span();
        (j / per) * TOTAL_PROPORTION + lo + j % per
    }

    /// The next id of this table after `id` (which is of this table).
    #[inline]
    fn next_id(self, id: u64) -> u64 {
        let (lo, per) = self.span();
        let off = id % TOTAL_PROPORTION;
        if off + 1 < lo + per {
            id + 1
        } else {
            id - off + TOTAL_PROPORTION + lo
        }
    }
}

/// The last person id (base 0) created up to event `id`: the current one if `id` is a
/// person.
#[inline]
pub(crate) fn last_base0_person_id(id: u64) -> i64 {
    let epoch = id / TOTAL_PROPORTION;
    let offset = id % TOTAL_PROPORTION;
    // Past this block's people: its last person.
    let offset = if offset >= PERSON_PROPORTION {
        PERSON_PROPORTION - 1
    } else {
        offset
    };
    (epoch * PERSON_PROPORTION + offset) as i64
}

/// The last auction id (base 0) created up to event `id`: the current one if `id` is an
/// auction; -1 before the first auction.
#[inline]
pub(crate) fn last_base0_auction_id(id: u64) -> i64 {
    let epoch = (id / TOTAL_PROPORTION) as i64;
    let offset = id % TOTAL_PROPORTION;
    let a = AUCTION_PROPORTION as i64;
    if offset < PERSON_PROPORTION {
        (epoch - 1) * a + (a - 1)
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        epoch * a + (a - 1)
    } else {
        epoch * a + (offset - PERSON_PROPORTION) as i64
    }
}

/// A random person among the `NUM_ACTIVE_PEOPLE` most recent, or up to `PERSON_ID_LEAD`
/// not created yet.
#[inline]
pub(crate) fn next_base0_person_id(id: u64, rng: &mut SplitMix64) -> i64 {
    let num_people = last_base0_person_id(id) as u64 + 1;
    let active = num_people.min(NUM_ACTIVE_PEOPLE);
    (num_people - active + rng.below(active + PERSON_ID_LEAD)) as i64
}

/// A random auction among the `NUM_IN_FLIGHT_AUCTIONS` most recent, or up to
/// `AUCTION_ID_LEAD` not created yet.
#[inline]
pub(crate) fn next_base0_auction_id(id: u64, rng: &mut SplitMix64) -> i64 {
    let max = last_base0_auction_id(id).max(0);
    let min = (max - NUM_IN_FLIGHT_AUCTIONS).max(0);
    min + rng.below((max - min) as u64 + 1 + AUCTION_ID_LEAD) as i64
}

/// Event time and ordering of the stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeline {
    /// Event time of event number 0, epoch milliseconds.
    pub(crate) start_ms: i64,
    /// Events per second of event time (`nexmark.event.rate`).
    pub(crate) rate: u64,
    /// `nexmark.out.of.order.group`: events are permuted within groups of this many.
    pub(crate) group: u64,
}

impl Timeline {
    /// The event id emitted at position `n`: `(n / g) * g + (n * 953) % g`.
    #[inline]
    pub(crate) fn adjusted(&self, n: u64) -> u64 {
        if self.group == 1 {
            return n;
        }
        let g = self.group;
        (n / g) * g + ((n % g) * OUT_OF_ORDER_MULTIPLIER) % g
    }

    /// Event time of event number `k`: `start + floor(k * 1e6 / rate) / 1000`, computed
    /// exactly in integers (`floor(k * 1000 / rate)` milliseconds).
    #[inline]
    pub(crate) fn time_of(&self, k: u64) -> i64 {
        let ms = match k.checked_mul(1000) {
            Some(x) => x / self.rate,
            None => (u128::from(k) * 1000 / u128::from(self.rate)) as u64,
        };
        self.start_ms.saturating_add(ms as i64)
    }

    /// How many of the events at positions `0..events` belong to `table`.
    pub(crate) fn table_rows(&self, table: Table, events: u64) -> u64 {
        let full = events - events % self.group;
        let tail = (full..events)
            .filter(|&n| Table::of_event(self.adjusted(n)) == table)
            .count() as u64;
        table.ids_below(full) + tail
    }

    /// The emission position of row `j` of `table` (its `j`-th event in emission order).
    pub(crate) fn position_of_row(&self, table: Table, j: u64) -> u64 {
        if self.group == 1 {
            return table.nth_id(j);
        }
        let g = self.group;
        // Group `G` holds exactly the ids `G*g..(G+1)*g` (permuted), so the row sits in the
        // group of the table's `j`-th id, after the table's `ids_below(G*g)` earlier rows.
        let group = table.nth_id(j) / g;
        let mut left = j - table.ids_below(group * g);
        let mut n = group * g;
        loop {
            if Table::of_event(self.adjusted(n)) == table {
                if left == 0 {
                    return n;
                }
                left -= 1;
            }
            n += 1;
        }
    }
}

/// Walks one table's rows in emission order: row `j` -> its position in the stream.
#[derive(Debug, Clone)]
pub(crate) struct Cursor {
    table: Table,
    /// The row `pos` belongs to.
    row: u64,
    pos: u64,
}

impl Cursor {
    pub(crate) fn new(table: Table, timeline: &Timeline) -> Self {
        Cursor {
            table,
            row: 0,
            pos: timeline.position_of_row(table, 0),
        }
    }

    /// The emission position of row `j`; cheap when `j` follows the previous call.
    #[inline]
    pub(crate) fn position(&mut self, j: u64, timeline: &Timeline) -> u64 {
        if j == self.row + 1 {
            self.pos = if timeline.group == 1 {
                self.table.next_id(self.pos)
            } else {
                let mut n = self.pos + 1;
                while Table::of_event(timeline.adjusted(n)) != self.table {
                    n += 1;
                }
                n
            };
            self.row = j;
        } else if j != self.row {
            self.pos = timeline.position_of_row(self.table, j);
            self.row = j;
        }
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(group: u64) -> Timeline {
        Timeline {
            start_ms: 0,
            rate: 1000,
            group,
        }
    }

    #[test]
    fn last_ids_follow_the_spec() {
        // Event ids 0..50: person 0, auctions 1..3, bids 4..49.
        assert_eq!(last_base0_person_id(0), 0);
        assert_eq!(last_base0_person_id(49), 0);
        assert_eq!(last_base0_person_id(50), 1);
        assert_eq!(last_base0_person_id(1234), 24);
        assert_eq!(last_base0_auction_id(0), -1);
        assert_eq!(last_base0_auction_id(1), 0);
        assert_eq!(last_base0_auction_id(3), 2);
        assert_eq!(last_base0_auction_id(4), 2);
        assert_eq!(last_base0_auction_id(50), 2);
        assert_eq!(last_base0_auction_id(51), 3);
        assert_eq!(last_base0_auction_id(99), 5);
    }

    #[test]
    fn adjusted_numbers_permute_each_group() {
        for g in [1u64, 2, 7, 50, 64, 100] {
            let t = timeline(g);
            for group in 0..5u64 {
                let mut ids: Vec<u64> = (group * g..(group + 1) * g)
                    .map(|n| t.adjusted(n))
                    .collect();
                ids.sort_unstable();
                assert_eq!(
                    ids,
                    (group * g..(group + 1) * g).collect::<Vec<_>>(),
                    "g={g}"
                );
            }
        }
        assert_eq!(timeline(50).adjusted(1), 953 % 50);
        assert_eq!(timeline(50).adjusted(51), 50 + 953 % 50);
    }

    #[test]
    fn rows_and_positions_agree_with_a_scan() {
        for g in [1u64, 3, 7, 50, 64] {
            let t = timeline(g);
            for table in Table::ALL {
                let positions: Vec<u64> = (0..1000u64)
                    .filter(|&n| Table::of_event(t.adjusted(n)) == table)
                    .collect();
                let mut cursor = Cursor::new(table, &t);
                for (j, &n) in positions.iter().enumerate() {
                    assert_eq!(t.position_of_row(table, j as u64), n, "g={g} {table:?} {j}");
                    assert_eq!(cursor.position(j as u64, &t), n);
                }
                // A jump back and forth.
                assert_eq!(cursor.position(3, &t), positions[3]);
                assert_eq!(cursor.position(4, &t), positions[4]);
                for events in [0u64, 1, 49, 50, 51, 333, 999] {
                    let expected = positions.iter().filter(|&&n| n < events).count() as u64;
                    assert_eq!(
                        t.table_rows(table, events),
                        expected,
                        "g={g} {table:?} {events}"
                    );
                }
            }
        }
    }

    #[test]
    fn event_time_is_exact() {
        let t = Timeline {
            start_ms: 1_000,
            rate: 3,
            group: 1,
        };
        // 1e6 / 3 us per event: events 0, 1, 2 in the first second, 3 at exactly 1 s.
        assert_eq!(t.time_of(0), 1_000);
        assert_eq!(t.time_of(2), 1_666);
        assert_eq!(t.time_of(3), 2_000);
        let fast = Timeline {
            start_ms: 0,
            rate: 10_000_000,
            group: 1,
        };
        assert_eq!(fast.time_of(9_999), 0);
        assert_eq!(fast.time_of(10_000), 1);
        assert_eq!(
            fast.time_of(u64::MAX / 10),
            (u128::from(u64::MAX / 10) * 1000 / 10_000_000) as i64
        );
    }
}
