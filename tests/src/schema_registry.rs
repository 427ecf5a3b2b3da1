//! A stand-in for a Confluent-compatible schema registry, for the Avro tests.
//!
//! The real Confluent Schema Registry (and Apicurio, Karapace) cannot be fetched from the
//! registries this project's machines reach, so the tests run this in-process HTTP server
//! instead. It implements exactly the two calls Weir makes, with the registry's JSON shapes:
//! `GET /schemas/ids/{id}` and `POST /subjects/{subject}/versions`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    schemas: Vec<String>,
    subjects: HashMap<String, Vec<u32>>,
}

/// A running stand-in registry; it lives as long as the test process.
#[derive(Clone)]
pub struct TestRegistry {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl TestRegistry {
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &s);
                });
            }
        });
        Ok(TestRegistry { url, state })
    }

    /// Register a schema under a subject, as `POST /subjects/{subject}/versions` does.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        register(&self.state, subject, schema)
    }

    /// The schema text for an id.
    pub fn schema(&self, id: u32) -> Option<String> {
        let st = self.state.lock().ok()?;
        st.schemas.get(id.checked_sub(1)? as usize).cloned()
    }

    /// Ids registered under a subject.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.state
            .lock()
            .map(|st| st.subjects.get(subject).cloned().unwrap_or_default())
            .unwrap_or_default()
    }
}

fn register(state: &Mutex<State>, subject: &str, schema: &str) -> u32 {
    let Ok(mut st) = state.lock() else { return 0 };
    let id = match st.schemas.iter().position(|s| s == schema) {
        Some(i) => i as u32 + 1,
        None => {
            st.schemas.push(schema.to_string());
            st.schemas.len() as u32
        }
    };
    let v = st.subjects.entry(subject.to_string()).or_default();
    if !v.contains(&id) {
        v.push(id);
    }
    id
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        let (status, reply) = route(state, method, path, &body);
        let text = reply.to_string();
        write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
             Content-Length: {}\r\n\r\n{text}",
            text.len()
        )?;
        stream.flush()?;
    }
}

fn route(state: &Mutex<State>, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found = || {
        (
            404,
            serde_json::json!({"error_code": 40403, "message": "Schema not found"}),
        )
    };
    match (method, segments.as_slice()) {
        ("GET", ["schemas", "ids", id]) => {
            let Ok(id) = id.parse::<u32>() else {
                return not_found();
            };
            let st = match state.lock() {
                Ok(s) => s,
                Err(_) => return (500, serde_json::json!({})),
            };
            match id.checked_sub(1).and_then(|i| st.schemas.get(i as usize)) {
                Some(s) => (200, serde_json::json!({ "schema": s })),
                None => not_found(),
            }
        }
        ("POST", ["subjects", subject, "versions"]) => {
            let schema = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["schema"].as_str().map(str::to_string));
            match schema {
                Some(s) => (
                    200,
                    serde_json::json!({ "id": register(state, subject, &s) }),
                ),
                None => (
                    422,
                    serde_json::json!({"error_code": 42201, "message": "Invalid schema"}),
                ),
            }
        }
        _ => (
            404,
            serde_json::json!({"error_code": 404, "message": "HTTP 404 Not Found"}),
        ),
    }
}
