//! Slow-header clients (slowloris): a connection that sends part of a request head and
//! then nothing, or trickles it a byte at a time, is closed once `[server]
//! header_read_timeout` has passed, while other clients are served meanwhile and a
//! WebSocket subscription outlives the timeout.

use super::{Server, call, next, start_with_config, subscribe};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(2);
/// How long past the timeout the server may take to close a connection (a loaded machine
/// running other tests).
const MARGIN: Duration = Duration::from_secs(8);

/// How a slow connection ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The server closed it (end of stream, or a reset), after this long, having sent this.
    Closed(Duration, String),
    /// Still open at the deadline.
    Open,
}

/// Send `head`, then `trickle` one byte at a time (every 100 ms), then nothing, until the
/// server closes the connection or `deadline` passes.
fn slow_client(server: &Server, head: &[u8], trickle: &[u8], deadline: Duration) -> Ended {
    let mut tcp = TcpStream::connect(server.addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let start = Instant::now();
    tcp.write_all(head).expect("the first bytes");
    let mut trickle = trickle.iter();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < deadline {
        if let Some(b) = trickle.next()
            && tcp.write_all(&[*b]).is_err()
        {
            return Ended::Closed(start.elapsed(), String::from_utf8_lossy(&got).into());
        }
        match tcp.read(&mut buf) {
            Ok(0) => return Ended::Closed(start.elapsed(), String::from_utf8_lossy(&got).into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                return Ended::Closed(start.elapsed(), String::from_utf8_lossy(&got).into());
            }
        }
    }
    Ended::Open
}

fn assert_closed_in_time(what: &str, ended: Ended) {
    match ended {
        Ended::Closed(after, sent) => {
            // Not before the timeout (less a little for timer granularity), and no answer
            // to a request it never finished, other than a 408.
            assert!(
                after + Duration::from_millis(300) >= TIMEOUT,
                "{what}: closed after only {after:?}"
            );
            assert!(
                sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
                "{what}: the server answered {sent:?}"
            );
        }
        Ended::Open => panic!("{what}: still open {:?} after it started", TIMEOUT + MARGIN),
    }
}

#[test]
fn slow_header_clients_are_cut_off_and_others_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queries = dir.path().join("queries");
    std::fs::create_dir(&queries).expect("mkdir");
    let server = start_with_config(
        dir.path(),
        &format!(
            "[server]\nheader_read_timeout = '{}ms'\n",
            TIMEOUT.as_millis()
        ),
        queries,
    );
    // A subscription taken before the slow clients, read from after they were cut off.
    let mut ws = subscribe(&server, "/api/v1/status/subscribe");
    assert_eq!(next(&mut ws).expect("status")["type"], "status");
    let subscribed = Instant::now();

    let header = format!("X-Trickle: {}\r\n", "a".repeat(200));
    std::thread::scope(|s| {
        let stalled = s.spawn(|| {
            slow_client(
                &server,
                b"GET /api/v1/views HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
                b"",
                TIMEOUT + MARGIN,
            )
        });
        // A byte every 100 ms: it keeps sending, but never finishes a head in time.
        let trickling = s.spawn(|| {
            slow_client(
                &server,
                b"GET /health HTTP/1.1\r\n",
                header.as_bytes(),
                TIMEOUT + MARGIN,
            )
        });
        let silent = s.spawn(|| slow_client(&server, b"", b"", TIMEOUT + MARGIN));
        // Meanwhile others are served.
        for _ in 0..5 {
            let (status, body) = call("GET", &server.url("/health"), None, None);
            assert_eq!(status, 200, "{body}");
        }
        assert_closed_in_time("a stalled head", stalled.join().expect("join"));
        assert_closed_in_time("a trickled head", trickling.join().expect("join"));
        assert_closed_in_time("a silent connection", silent.join().expect("join"));
    });

    // A whole request is answered as before, and the subscription lives on past the
    // timeout: status messages keep coming.
    let (status, body) = call("GET", &server.url("/api/v1/views"), None, None);
    assert_eq!(status, 200, "{body}");
    while subscribed.elapsed() < TIMEOUT + Duration::from_secs(1) {
        assert_eq!(
            next(&mut ws).expect("the subscription is still open")["type"],
            "status"
        );
    }
    server.stop();
}
