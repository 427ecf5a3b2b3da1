//! The API docs page: `/docs` needs no token, neither do the files it loads, and the
//! OpenAPI document it points at is valid JSON listing the API's routes, which needs a
//! token when tokens are configured (any role).

use super::{Server, call, start_with_config};
use serde_json::Value;

/// The values of the page's `src="..."` and `href="..."` attributes and of its
/// `data-openapi="..."` (the document Swagger UI loads).
fn attribute(page: &str, attr: &str) -> Vec<String> {
    let key = format!("{attr}=\"");
    page.match_indices(&key)
        .filter_map(|(at, _)| {
            let rest = &page[at + key.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .collect()
}

fn get_text(server: &Server, path: &str, token: Option<&str>) -> (u16, String) {
    let (status, body) = call("GET", &server.url(path), token, None);
    let text = match body {
        Value::String(s) => s,
        other => other.to_string(),
    };
    (status, text)
}

#[test]
fn the_docs_page_loads_without_a_token_and_shows_the_openapi_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queries = dir.path().join("queries");
    std::fs::create_dir(&queries).expect("mkdir");
    let server = start_with_config(
        dir.path(),
        "[server]\nadmin_tokens = ['adm-secret']\nread_tokens = ['rd-secret']\n",
        queries,
    );
    let (status, page) = get_text(&server, "/docs", None);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<div id=\"swagger-ui\""), "{page}");
    let mut loads = attribute(&page, "src");
    loads.extend(attribute(&page, "href"));
    assert!(
        loads.iter().any(|l| l.ends_with("swagger-ui-bundle.js")),
        "{loads:?}"
    );
    for path in &loads {
        let (status, body) = get_text(&server, path, None);
        assert_eq!(status, 200, "/docs loads {path}: {body}");
        assert!(!body.is_empty(), "{path}");
    }
    let spec = attribute(&page, "data-openapi");
    let [spec] = spec.as_slice() else {
        panic!("one OpenAPI document: {spec:?}");
    };
    // An API route: a token is needed, a read token is enough.
    assert_eq!(call("GET", &server.url(spec), None, None).0, 401);
    let (status, text) = get_text(&server, spec, Some("rd-secret"));
    assert_eq!(status, 200, "{text}");
    let doc: Value = serde_json::from_str(&text).expect("the OpenAPI document is JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");
    for p in ["/api/v1/sql", "/api/v1/query", "/api/v1/views", "/health"] {
        assert!(paths.contains_key(p), "{p} is not in the document");
    }
    server.stop();
}
