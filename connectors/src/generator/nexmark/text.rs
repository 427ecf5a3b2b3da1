//! The Nexmark generator's text and price recipes: random strings, names, places, credit
//! card numbers, log-uniform prices, the `extra` padding (slices of one pre-generated
//! random buffer) and the channel / URL cache. Everything seed-dependent is built once per
//! source from the seed, so the values are the same in every source with that seed.

use super::super::rng::{SplitMix64, mix};

pub(crate) const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
pub(crate) const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
pub(crate) const CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
pub(crate) const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
pub(crate) const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// P(hot channel) = 1 - 1 / ratio.
pub(crate) const HOT_CHANNELS_RATIO: u64 = 2;
/// Channels other than the hot ones: `channel-0` .. `channel-9999`.
pub(crate) const CHANNELS: usize = 10_000;
/// Of the other channels' URLs, this many in ten carry `&channel_id=...`.
const CHANNEL_ID_TENTHS: u64 = 9;
/// The random lowercase text `extra` fields are cut from.
pub(crate) const EXTRA_BUFFER_BYTES: usize = 1 << 20;
/// Shortest `next_string`.
const MIN_STRING_LENGTH: u64 = 3;

/// Salts that give the seed-wide tables their own random streams.
const EXTRA_SALT: u64 = 0x4E45_584D_4152_4B01;
const CHANNEL_SALT: u64 = 0x4E45_584D_4152_4B02;
const HOT_URL_SALT: u64 = 0x4E45_584D_4152_4B03;

/// Append a random string of `3..max_len` characters, each `sep` with probability 1/13
/// and otherwise a lowercase letter; spaces are trimmed off both ends (as Java's `trim`),
/// other separators are kept.
#[inline]
pub(crate) fn push_string(rng: &mut SplitMix64, max_len: u64, sep: u8, out: &mut String) {
    let len = (MIN_STRING_LENGTH + rng.below(max_len - MIN_STRING_LENGTH)) as usize;
    let mut buf = [0u8; 128];
    let len = len.min(buf.len());
    for b in &mut buf[..len] {
        // One draw per character: the high half picks separator or not, the low half the
        // letter.
        let x = rng.next_u64();
        *b = if ((x >> 32) * 13) >> 32 == 0 {
            sep
        } else {
            b'a' + (((x & 0xFFFF_FFFF) * 26) >> 32) as u8
        };
    }
    let mut chars = &buf[..len];
    if sep == b' ' {
        while let [b' ', rest @ ..] = chars {
            chars = rest;
        }
        while let [rest @ .., b' '] = chars {
            chars = rest;
        }
    }
    out.extend(chars.iter().map(|&b| b as char));
}

/// `round(10 ^ (U[0,1) * 6) * 100)`: log-uniform over 100 .. 1e8. (`10^x` as `2^(x log2 10)`
/// and rounding half up as `floor(x + 0.5)`, like Java's `Math.round`: both much cheaper
/// than `powf` and `round`.)
#[inline]
pub(crate) fn next_price(rng: &mut SplitMix64) -> i64 {
    let x = (rng.next_f64() * 6.0 * std::f64::consts::LOG2_10).exp2() * 100.0;
    (x + 0.5) as i64
}

/// Four groups of four digits separated by spaces.
pub(crate) fn push_credit_card(rng: &mut SplitMix64, out: &mut String) {
    for i in 0..4 {
        if i > 0 {
            out.push(' ');
        }
        let mut n = rng.below(10_000) as u32;
        let mut digits = [b'0'; 4];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend(digits.iter().map(|&b| b as char));
    }
}

/// The length of the `extra` padding for a row whose other fields take `current` of an
/// average `avg` bytes: 0 when already over, else uniform in `d - r .. d + r` with
/// `d = avg - current`, `r = round(d / 5)`.
#[inline]
pub(crate) fn extra_len(rng: &mut SplitMix64, current: usize, avg: usize) -> usize {
    if current > avg {
        return 0;
    }
    let d = avg - current;
    let delta = (d as f64 * 0.2).round() as usize;
    let min = d - delta;
    if delta == 0 {
        min
    } else {
        min + rng.below(2 * delta as u64) as usize
    }
}

/// A piece of one of the [`Texts`] buffers: `start..end` of `extra` or of `pool`.
pub(crate) type Span = (u32, u32);

/// The seed-wide text: the `extra` buffer and the channel names and URLs. Rows refer to it
/// by [`Span`]s, which are copied out column by column when a batch is finished: the copies
/// then run back to back, so the CPU overlaps the cache misses of these random reads.
pub(crate) struct Texts {
    pub(crate) extra: String,
    /// The names and URLs of the `CHANNELS` channels, then of the hot ones, back to back.
    pub(crate) pool: String,
    /// `(name, url)` spans in `pool` of channel `i`.
    channels: Vec<(Span, Span)>,
    hot: Vec<(Span, Span)>,
}

impl Texts {
    pub(crate) fn new(seed: u64) -> Self {
        let mut rng = SplitMix64::new(mix(seed ^ EXTRA_SALT));
        let mut extra = String::with_capacity(EXTRA_BUFFER_BYTES);
        while extra.len() < EXTRA_BUFFER_BYTES {
            // Four letters per draw, 16 bits each.
            let x = rng.next_u64();
            for k in 0..4 {
                let bits = (x >> (16 * k)) & 0xFFFF;
                extra.push((b'a' + ((bits * 26) >> 16) as u8) as char);
            }
        }
        extra.truncate(EXTRA_BUFFER_BYTES);

        let mut pool = String::with_capacity(CHANNELS * 80);
        let mut channels = Vec::with_capacity(CHANNELS);
        for i in 0..CHANNELS {
            let mut rng = SplitMix64::new(mix(seed ^ CHANNEL_SALT ^ mix(i as u64)));
            let name = span(&mut pool, |p| {
                p.push_str("channel-");
                p.push_str(&i.to_string());
            });
            let url = span(&mut pool, |p| {
                push_base_url(&mut rng, p);
                if rng.below(10) < CHANNEL_ID_TENTHS {
                    p.push_str("&channel_id=");
                    p.push_str(&channel_id(i as i32).to_string());
                }
            });
            channels.push((name, url));
        }
        let mut rng = SplitMix64::new(mix(seed ^ HOT_URL_SALT));
        let hot = HOT_CHANNELS
            .iter()
            .map(|name| {
                let n = span(&mut pool, |p| p.push_str(name));
                (n, span(&mut pool, |p| push_base_url(&mut rng, p)))
            })
            .collect();
        Texts {
            extra,
            pool,
            channels,
            hot,
        }
    }

    /// The `extra` field: `len` characters of the `extra` buffer from a random offset.
    #[inline]
    pub(crate) fn extra(&self, rng: &mut SplitMix64, len: usize) -> Span {
        let len = len.min(self.extra.len());
        let at = rng.below((self.extra.len() - len + 1) as u64) as usize;
        (at as u32, (at + len) as u32)
    }

    /// A bid's channel and URL (spans of `pool`): with P = 1/2 one of the four hot
    /// channels, else one of `CHANNELS` others.
    #[inline]
    pub(crate) fn channel(&self, rng: &mut SplitMix64) -> (Span, Span) {
        if rng.below(HOT_CHANNELS_RATIO) > 0 {
            self.hot[rng.below(HOT_CHANNELS.len() as u64) as usize]
        } else {
            self.channels[rng.below(CHANNELS as u64) as usize]
        }
    }
}

/// Append what `write` writes to `pool`; returns where it went.
fn span(pool: &mut String, write: impl FnOnce(&mut String)) -> (u32, u32) {
    let start = pool.len() as u32;
    write(pool);
    (start, pool.len() as u32)
}

/// `https://www.nexmark.com/<s>/<s>/<s>/item.htm?query=1`, each `<s>` a random string of
/// up to 5 characters with `_` as the separator.
fn push_base_url(rng: &mut SplitMix64, out: &mut String) {
    out.push_str("https://www.nexmark.com/");
    for _ in 0..3 {
        push_string(rng, 5, b'_', out);
        out.push('/');
    }
    out.push_str("item.htm?query=1");
}

/// `abs(Integer.reverse(i))` of the Java generator, without its overflow: channel 1
/// reverses to `i32::MIN`, whose absolute value Java leaves negative; here it is 2^31.
pub(crate) fn channel_id(i: i32) -> u32 {
    i.reverse_bits().unsigned_abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_follow_the_recipe() {
        let mut rng = SplitMix64::new(1);
        let mut spaces = 0usize;
        let mut chars = 0usize;
        for _ in 0..2000 {
            let mut s = String::new();
            push_string(&mut rng, 20, b' ', &mut s);
            assert!(s.len() < 20, "{s:?}");
            assert!(!s.starts_with(' ') && !s.ends_with(' '), "{s:?}");
            assert!(
                s.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()),
                "{s:?}"
            );
            spaces += s.bytes().filter(|&b| b == b' ').count();
            chars += s.len();
        }
        // About one character in 13 is a separator (fewer after trimming).
        let share = spaces as f64 / chars as f64;
        assert!((0.05..0.08).contains(&share), "{share}");
        let mut u = String::new();
        push_string(&mut rng, 5, b'_', &mut u);
        assert!((3..5).contains(&u.len()));
    }

    #[test]
    fn prices_extra_and_cards() {
        let mut rng = SplitMix64::new(2);
        let prices: Vec<i64> = (0..100_000).map(|_| next_price(&mut rng)).collect();
        assert!(prices.iter().all(|p| (100..=100_000_000).contains(p)));
        // Log-uniform: a sixth of the prices in each decade.
        let below_1000 = prices.iter().filter(|&&p| p < 1000).count() as f64 / 1e5;
        assert!((0.15..0.18).contains(&below_1000), "{below_1000}");
        let lens: Vec<usize> = (0..10_000).map(|_| extra_len(&mut rng, 32, 100)).collect();
        assert_eq!(lens.iter().min(), Some(&54));
        assert_eq!(lens.iter().max(), Some(&81));
        assert_eq!(extra_len(&mut rng, 101, 100), 0);
        assert_eq!(extra_len(&mut rng, 100, 100), 0);
        let mut cc = String::new();
        push_credit_card(&mut rng, &mut cc);
        assert_eq!(cc.len(), 19);
        assert!(
            cc.split(' ')
                .all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_digit()))
        );
    }

    #[test]
    fn channels_and_urls() {
        let texts = Texts::new(7);
        assert_eq!(texts.extra.len(), EXTRA_BUFFER_BYTES);
        assert!(texts.extra.bytes().all(|b| b.is_ascii_lowercase()));
        let mut rng = SplitMix64::new(3);
        let mut hot = 0;
        let mut with_id = 0;
        let mut others = 0;
        let text = |(a, b): Span| &texts.pool[a as usize..b as usize];
        for _ in 0..20_000 {
            let (channel, url) = texts.channel(&mut rng);
            let (channel, url) = (text(channel), text(url));
            assert!(url.starts_with("https://www.nexmark.com/"), "{url}");
            if let Some(i) = HOT_CHANNELS.iter().position(|c| *c == channel) {
                hot += 1;
                assert_eq!(url, text(texts.hot[i].1));
                assert!(url.ends_with("/item.htm?query=1"));
            } else {
                others += 1;
                let i: i32 = channel.strip_prefix("channel-").unwrap().parse().unwrap();
                assert!((0..CHANNELS as i32).contains(&i));
                if let Some((_, id)) = url.split_once("&channel_id=") {
                    assert_eq!(id, channel_id(i).to_string());
                    with_id += 1;
                }
            }
        }
        assert!((9_500..10_500).contains(&hot), "{hot}");
        let share = with_id as f64 / others as f64;
        assert!((0.87..0.93).contains(&share), "{share}");
        assert_eq!(channel_id(1), 1 << 31);
        assert_eq!(channel_id(2), 1 << 30);
        // Same seed, same text.
        let again = Texts::new(7);
        assert_eq!(again.pool, texts.pool);
        assert_ne!(Texts::new(8).pool, texts.pool);
    }
}
