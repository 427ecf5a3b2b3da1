//! The `webhook` sink: each batch of a view's rows POSTed as JSON to a URL.
//!
//! ```sql
//! CREATE SINK alerts FROM failing_regions WITH (connector = 'webhook',
//!     url = 'https://hooks.example.com/weir', 'hmac.secret.env' = 'HOOK_SECRET');
//! ```
//!
//! A request carries up to `batch.rows` rows of one batch the view emitted:
//! `{"sink", "view", "first_row_id", "rows": [{column: value, ...}, ...]}`, rows encoded
//! as docs/json.md says. Its `Idempotency-Key` header is `<sink>:<first row id>:<rows>`:
//! row ids are deterministic ([`RowIds`]), so a request sent again (a retry, or a replay
//! after a restart from a checkpoint) has the key it had the first time and a receiver
//! can drop the repeat. With `hmac.secret` (or `hmac.secret.env`, the name of an
//! environment variable holding it), `X-Weir-Signature: sha256=<hex>` is the HMAC-SHA256
//! of the body under that secret.
//!
//! A request that fails with a connection error, a timeout, 408, 429 or a 5xx is tried
//! again with exponential backoff, up to `retry.max` retries (each wait at most
//! `retry.backoff.max`); the pipeline waits meanwhile, so a receiver that is down holds
//! the view back rather than filling memory. Any other answer (a 4xx: the receiver will
//! not take these rows), or the retries spent, sends the request's rows to the sink's
//! dead-letter file, `<data_dir>/dead-letter/<sink>.jsonl`, one record per row with the
//! reason, and the sink goes on. Delivery is at least once; the idempotency key makes it
//! effectively once for a receiver that honours it.

use crate::dead_letter::DeadLetterWriter;
use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use weir_engine::backoff::Backoff;
use weir_engine::connector::{RowIds, Sink, SinkFactory, SinkSpec};
use weir_engine::stats::{Stats, Status};
use weir_engine::{Result, WeirError};

pub const VALID_KEYS: &[&str] = &[
    "connector",
    "url",
    "batch.rows",
    "timeout",
    "retry.max",
    "retry.backoff.max",
    "hmac.secret",
    "hmac.secret.env",
];

/// The prefix of extra request headers (`'header.Authorization' = 'Bearer ...'`).
pub const HEADER_PREFIX: &str = "header.";

const DEFAULT_BATCH_ROWS: usize = 500;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RETRY_MAX: u32 = 8;
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// The parsed options.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    pub url: String,
    pub batch_rows: usize,
    pub timeout: Duration,
    pub retry_max: u32,
    pub backoff_max: Duration,
    pub secret: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl WebhookOptions {
    pub fn parse(options: &mut weir_engine::options::Options, what: &str) -> Result<Self> {
        let url = options
            .take("url")
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| WeirError::user(format!("{what}: option 'url' is required")))?;
        let url = url.trim().to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(WeirError::user(format!(
                "{what}: 'url' must start with http:// or https://, got '{url}'"
            )));
        }
        let batch_rows = options
            .take_parse::<usize>("batch.rows")?
            .unwrap_or(DEFAULT_BATCH_ROWS);
        if batch_rows == 0 {
            return Err(WeirError::user(format!(
                "{what}: 'batch.rows' must be at least 1"
            )));
        }
        let timeout = options.take_duration("timeout")?.unwrap_or(DEFAULT_TIMEOUT);
        let retry_max = options
            .take_parse::<u32>("retry.max")?
            .unwrap_or(DEFAULT_RETRY_MAX);
        let backoff_max = options
            .take_duration("retry.backoff.max")?
            .unwrap_or(DEFAULT_BACKOFF_MAX);
        let secret = match (options.take("hmac.secret"), options.take("hmac.secret.env")) {
            (Some(_), Some(_)) => {
                return Err(WeirError::user(format!(
                    "{what}: give 'hmac.secret' or 'hmac.secret.env', not both"
                )));
            }
            (Some(s), None) => Some(s.into_bytes()),
            (None, Some(var)) => Some(
                std::env::var(&var)
                    .map_err(|_| {
                        WeirError::user(format!(
                            "{what}: 'hmac.secret.env' names environment variable '{var}', \
                             which is not set"
                        ))
                    })?
                    .into_bytes(),
            ),
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(WeirError::user(format!("{what}: the HMAC secret is empty")));
        }
        let headers = options.take_prefixed(HEADER_PREFIX);
        for (name, _) in &headers {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(WeirError::user(format!(
                    "{what}: '{HEADER_PREFIX}{name}': a header name after 'header.' (letters, \
                     digits, '-')"
                )));
            }
        }
        Ok(WebhookOptions {
            url,
            batch_rows,
            timeout,
            retry_max,
            backoff_max,
            secret,
            headers,
        })
    }
}

pub struct WebhookSinkFactory;

impl SinkFactory for WebhookSinkFactory {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn create(&self, spec: SinkSpec) -> Result<Box<dyn Sink>> {
        let what = format!("sink '{}'", spec.name);
        if spec.changelog {
            return Err(WeirError::user(format!(
                "{what}: view '{}' is an updating view (its rows change and go away); the \
                 webhook sink posts rows as they are emitted and takes append-only views only",
                spec.view
            )));
        }
        let mut options = spec.options.clone();
        let opts = WebhookOptions::parse(&mut options, &what)?;
        options.finish(&format!("the webhook sink '{}'", spec.name), VALID_KEYS)?;
        Ok(Box::new(WebhookSink::new(&spec, opts)))
    }
}

pub struct WebhookSink {
    name: String,
    view: String,
    opts: Arc<WebhookOptions>,
    agent: ureq::Agent,
    stats: Arc<Stats>,
    dead: DeadLetterWriter,
}

/// One request's outcome after its retries.
enum Sent {
    Delivered,
    /// Not delivered: why (its rows go to the dead-letter file).
    Refused(String),
}

impl WebhookSink {
    pub fn new(spec: &SinkSpec, opts: WebhookOptions) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(opts.timeout))
            .build()
            .into();
        WebhookSink {
            name: spec.name.clone(),
            view: spec.view.clone(),
            agent,
            stats: spec.stats.clone(),
            dead: DeadLetterWriter::new(&spec.data_dir, &spec.name),
            opts: Arc::new(opts),
        }
    }

    /// POST one request, trying again while the failure may pass.
    async fn send(&mut self, body: Vec<u8>, key: String) -> Result<Sent> {
        let signature = self.opts.secret.as_ref().map(|s| sign(s, &body));
        let policy = Backoff::new(FIRST_BACKOFF, self.opts.backoff_max.max(FIRST_BACKOFF))
            .max_retries(self.opts.retry_max);
        let mut attempts = policy.start();
        let body = Arc::new(body);
        loop {
            let (agent, opts, body2, key2, sig) = (
                self.agent.clone(),
                self.opts.clone(),
                body.clone(),
                key.clone(),
                signature.clone(),
            );
            let answer =
                tokio::task::spawn_blocking(move || post(&agent, &opts, &body2, &key2, sig))
                    .await
                    .map_err(|e| WeirError::Internal(format!("webhook request task: {e}")))?;
            let why = match answer {
                Ok(status) if (200..300).contains(&status) => {
                    Stats::add(&self.stats.bytes, body.len() as u64);
                    if attempts.retries() > 0 {
                        self.stats.set_status(Status::Running);
                    }
                    return Ok(Sent::Delivered);
                }
                Ok(status) if !retryable_status(status) => {
                    return Ok(Sent::Refused(format!(
                        "{} answered {status}, which is not retried",
                        self.opts.url
                    )));
                }
                Ok(status) => format!("{} answered {status}", self.opts.url),
                Err(e) => format!("{}: {e}", self.opts.url),
            };
            Stats::add(&self.stats.errors, 1);
            let Some(wait) = attempts.next_delay() else {
                return Ok(Sent::Refused(format!(
                    "{why}; gave up after {} attempts (retry.max = {})",
                    attempts.retries() + 1,
                    self.opts.retry_max
                )));
            };
            let msg = format!("webhook sink '{}': {why}", self.name);
            self.stats.set_error(msg.clone());
            self.stats.set_status(Status::Retrying);
            tracing::warn!(sink = %self.name, attempt = attempts.retries(),
                next_retry_ms = wait.as_millis() as u64, error = %msg,
                "webhook sink: request failed, retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// One POST; the status, or why there was none.
fn post(
    agent: &ureq::Agent,
    opts: &WebhookOptions,
    body: &[u8],
    key: &str,
    signature: Option<String>,
) -> std::result::Result<u16, String> {
    let mut req = agent
        .post(&opts.url)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", key)
        .header("User-Agent", concat!("weir/", env!("CARGO_PKG_VERSION")));
    if let Some(s) = &signature {
        req = req.header("X-Weir-Signature", s);
    }
    for (k, v) in &opts.headers {
        req = req.header(k, v);
    }
    match req.send(body) {
        Ok(mut res) => {
            // Read the answer through, so the connection can be used again.
            let _ = res.body_mut().read_to_vec();
            Ok(res.status().as_u16())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Statuses worth another try: request timeout, too many requests, server errors.
fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[async_trait]
impl Sink for WebhookSink {
    async fn write(&mut self, batch: RecordBatch, ids: RowIds) -> Result<()> {
        let rows = weir_engine::json::row_objects(&batch);
        for (chunk, part) in rows.chunks(self.opts.batch_rows).enumerate() {
            let offset = (chunk * self.opts.batch_rows) as u64;
            let first = ids.id(offset as usize);
            let key = format!("{}:{first}:{}", self.name, part.len());
            let body = serde_json::to_vec(&serde_json::json!({
                "sink": self.name,
                "view": self.view,
                "first_row_id": first,
                "rows": part,
            }))
            .map_err(|e| WeirError::Internal(format!("encoding a webhook body: {e}")))?;
            if let Sent::Refused(reason) = self.send(body, key).await? {
                tracing::warn!(sink = %self.name, rows = part.len(), reason = %reason,
                    path = %self.dead.path().display(),
                    "webhook sink: rows not delivered, written to the dead-letter file");
                for (i, row) in part.iter().enumerate() {
                    self.dead.append(&serde_json::json!({
                        "sink": self.name,
                        "view": self.view,
                        "row": row,
                        "row_id": ids.id(offset as usize + i),
                        "reason": reason,
                        "time": weir_engine::dead_letter::now_rfc3339(),
                    }))?;
                }
                self.dead.flush()?;
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.dead.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::options::Options;

    fn parse(pairs: &[(&str, &str)]) -> Result<WebhookOptions> {
        let mut o = Options::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let r = WebhookOptions::parse(&mut o, "sink 'hook'")?;
        o.finish("the webhook sink 'hook'", VALID_KEYS)?;
        Ok(r)
    }

    #[test]
    fn options_and_their_errors() {
        let o = parse(&[
            ("url", "http://127.0.0.1:9/x"),
            ("batch.rows", "7"),
            ("header.Authorization", "Bearer t"),
            ("hmac.secret", "s3"),
        ])
        .unwrap();
        assert_eq!(o.batch_rows, 7);
        // Option keys are case-insensitive (lowercased), as HTTP header names are.
        assert_eq!(o.headers, vec![("authorization".into(), "Bearer t".into())]);
        assert_eq!(o.secret.as_deref(), Some(&b"s3"[..]));
        assert_eq!(o.retry_max, DEFAULT_RETRY_MAX);
        for (pairs, says) in [
            (vec![], "'url' is required"),
            (vec![("url", "ftp://x")], "http:// or https://"),
            (vec![("url", "http://x"), ("batch.rows", "0")], "at least 1"),
            (vec![("url", "http://x"), ("header.", "v")], "a header name"),
            (
                vec![
                    ("url", "http://x"),
                    ("hmac.secret.env", "WEIR_TEST_UNSET_VAR_42"),
                ],
                "not set",
            ),
            (vec![("url", "http://x"), ("nope", "1")], "nope"),
        ] {
            let e = parse(&pairs).unwrap_err().to_string();
            assert!(e.contains(says), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
