//! The dashboard: a page at `/` and its static files under `/assets/`, compiled into the
//! binary. Our own files live in `server/assets/`; the chart library (uPlot, from the npm
//! registry at a pinned version and integrity) is fetched by `build.rs`.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const UPLOT_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uPlot.iife.min.js"));
const UPLOT_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/uPlot.min.css"));

/// The file served for an asset name, with its content type.
fn asset(name: &str) -> Option<(&'static [u8], &'static str)> {
    Some(match name {
        "app.js" => (APP_JS.as_bytes(), "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS.as_bytes(), "text/css; charset=utf-8"),
        "uPlot.iife.min.js" => (UPLOT_JS, "text/javascript; charset=utf-8"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        _ => return None,
    })
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}

async fn assets(Path(name): Path<String>) -> Response {
    match asset(&name) {
        Some((body, content_type)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(assets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_loads_is_served() {
        for name in ["app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css"] {
            assert!(INDEX.contains(&format!("/assets/{name}")), "{name}");
            assert!(asset(name).is_some_and(|(b, _)| !b.is_empty()), "{name}");
        }
        assert!(asset("../Cargo.toml").is_none());
        assert!(String::from_utf8_lossy(UPLOT_JS).contains("uPlot"));
    }
}
