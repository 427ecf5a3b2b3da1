//! `WITH (...)` options: a case-insensitive key/value map that each consumer takes keys
//! from, so that whatever is left over can be reported as unknown with the valid keys.

use crate::error::{Result, WeirError};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    map: BTreeMap<String, String>,
    /// Keys the engine took before handing the options on (`connector`, `idle.timeout`),
    /// named in the unknown-key error with `also_takes`'s words.
    also: Option<(&'static str, &'static [&'static str])>,
}

impl Options {
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Options {
            map: pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            also: None,
        }
    }

    /// Say in the unknown-key error that `what` also takes `keys` (the engine's own keys,
    /// taken before a connector sees the rest): `every source also takes: connector, ...`.
    pub fn also_takes(mut self, what: &'static str, keys: &'static [&'static str]) -> Self {
        self.also = Some((what, keys));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.map.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Remove and return a key.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.map.remove(key)
    }

    /// Remove and return every key that starts with `prefix` (`properties.`, `header.`),
    /// as (the rest of the key, value), in key order.
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, String)> {
        let keys: Vec<String> = self
            .map
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let v = self.map.remove(&k)?;
                Some((k[prefix.len()..].to_string(), v))
            })
            .collect()
    }

    pub fn take_or(&mut self, key: &str, default: &str) -> String {
        self.take(key).unwrap_or_else(|| default.to_string())
    }

    pub fn take_parse<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => {
                v.trim().parse::<T>().map(Some).map_err(|_| {
                    WeirError::user(format!("option '{key}' has an invalid value '{v}'"))
                })
            }
        }
    }

    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse_duration(&v)
                .map(Some)
                .map_err(|e| WeirError::user(format!("option '{key}': {e}"))),
        }
    }

    /// One of a fixed set of values.
    pub fn take_choice(&mut self, key: &str, choices: &[&str], default: &str) -> Result<String> {
        let v = self.take_or(key, default).to_ascii_lowercase();
        if choices.contains(&v.as_str()) {
            Ok(v)
        } else {
            Err(WeirError::user(format!(
                "option '{key}' must be one of {}, got '{v}'",
                choices.join(" | ")
            )))
        }
    }

    /// Fail if any key is left, naming it and listing the valid keys.
    pub fn finish(self, what: &str, valid: &[&str]) -> Result<()> {
        if let Some((k, _)) = self.map.iter().next() {
            let mut keys: Vec<&str> = valid.to_vec();
            keys.sort_unstable();
            let also = match self.also {
                Some((who, extra)) => format!("; {who} also takes: {}", extra.join(", ")),
                None => String::new(),
            };
            return Err(WeirError::user(format!(
                "unknown option '{k}' for {what}; valid options: {}{also}",
                keys.join(", ")
            )));
        }
        Ok(())
    }
}

/// Parse `'30s'`, `'5m'`, `'1h'`, `'250ms'`, `'2 minutes'`, `'1 day'`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like '30s', '5m' or '1 hour'"))?;
    let ms = match unit.trim() {
        "ms" | "millisecond" | "milliseconds" => 1.0,
        "" | "s" | "sec" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        other => return Err(format!("unknown duration unit '{other}' in '{s}'")),
    };
    Ok(Duration::from_millis((n * ms).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_keys_are_taken_with_the_rest_of_their_name() {
        let mut o = Options::new(
            [
                ("Header.X-A", "1"),
                ("header.", "2"),
                ("headers", "3"),
                ("url", "u"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        assert_eq!(
            o.take_prefixed("header."),
            vec![
                (String::new(), "2".to_string()),
                ("x-a".to_string(), "1".to_string())
            ]
        );
        assert_eq!(o.get("headers"), Some("3"));
        assert_eq!(o.get("url"), Some("u"));
        assert!(o.take_prefixed("header.").is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("2 minutes").unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn unknown_key_lists_valid_ones() {
        let mut o = Options::new([("Path".into(), "x".into()), ("colour".into(), "y".into())]);
        assert_eq!(o.take("path").as_deref(), Some("x"));
        let e = o
            .finish("the file source", &["path", "format"])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown option 'colour' for the file source; valid options: format, path"
        );
    }
}
