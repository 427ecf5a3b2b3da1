//! The web pages: the dashboard at `/`, the API docs (Swagger UI over the OpenAPI
//! document) at `/docs`, and their static files under `/assets/`, all compiled into the
//! binary. Our own files live in `server/assets/`; the third-party ones (the chart library
//! uPlot, and Swagger UI from swagger-ui-dist, both from the npm registry at a pinned
//! version and integrity) are fetched by `build.rs`.

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
const DOCS: &str = include_str!("../assets/docs.html");
const DOCS_JS: &str = include_str!("../assets/docs.js");
const DOCS_CSS: &str = include_str!("../assets/docs.css");
const SWAGGER_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/swagger-ui-bundle.js"));
const SWAGGER_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/swagger-ui.css"));

/// The file served for an asset name, with its content type.
fn asset(name: &str) -> Option<(&'static [u8], &'static str)> {
    Some(match name {
        "app.js" => (APP_JS.as_bytes(), "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS.as_bytes(), "text/css; charset=utf-8"),
        "uPlot.iife.min.js" => (UPLOT_JS, "text/javascript; charset=utf-8"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        "docs.js" => (DOCS_JS.as_bytes(), "text/javascript; charset=utf-8"),
        "docs.css" => (DOCS_CSS.as_bytes(), "text/css; charset=utf-8"),
        "swagger-ui-bundle.js" => (SWAGGER_JS, "text/javascript; charset=utf-8"),
        "swagger-ui.css" => (SWAGGER_CSS, "text/css; charset=utf-8"),
        _ => return None,
    })
}

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

async fn index() -> Response {
    page(INDEX)
}

async fn docs() -> Response {
    page(DOCS)
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
        .route("/docs", get(docs))
        .route("/assets/{name}", get(assets))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    /// The paths a page's `src="..."` and `href="..."` attributes name on this server (not
    /// in-page links such as `#/stocks`, which load nothing).
    fn references(html: &str) -> Vec<&str> {
        ["src=\"", "href=\""]
            .iter()
            .flat_map(|attr| {
                html.match_indices(attr).filter_map(|(at, _)| {
                    let rest = &html[at + attr.len()..];
                    rest.find('"').map(|end| &rest[..end])
                })
            })
            .filter(|r| r.starts_with('/') && !r.starts_with("//"))
            .collect()
    }

    /// GET `path` from the pages' router: (status, content type, body).
    async fn fetch(path: &str) -> (StatusCode, String, Vec<u8>) {
        let res = router::<()>()
            .oneshot(Request::builder().uri(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(res.into_body(), 16 << 20)
            .await
            .unwrap();
        (status, content_type, body.to_vec())
    }

    /// Every file a page loads (its scripts and stylesheets) and every page it links to is
    /// served, non-empty, with a content type that suits it.
    async fn every_reference_is_served(page_path: &str, want: &[&str]) {
        let (status, content_type, page) = fetch(page_path).await;
        assert_eq!(status, StatusCode::OK, "{page_path}");
        assert!(content_type.starts_with("text/html"), "{content_type}");
        let page = String::from_utf8(page).unwrap();
        let refs = references(&page);
        for w in want {
            assert!(refs.contains(w), "{page_path} does not load {w}: {refs:?}");
        }
        for r in refs {
            let (status, content_type, body) = fetch(r).await;
            assert_eq!(status, StatusCode::OK, "{page_path} loads {r}");
            assert!(!body.is_empty(), "{r}");
            let expected = match r.rsplit_once('.').map(|(_, ext)| ext) {
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                _ => "text/html",
            };
            assert!(content_type.starts_with(expected), "{r}: {content_type}");
        }
    }

    #[tokio::test]
    async fn every_file_the_dashboard_loads_is_served() {
        every_reference_is_served(
            "/",
            &[
                "/assets/app.js",
                "/assets/app.css",
                "/assets/uPlot.iife.min.js",
                "/assets/uPlot.min.css",
            ],
        )
        .await;
        assert!(asset("../Cargo.toml").is_none());
        assert_eq!(fetch("/assets/nope.js").await.0, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(UPLOT_JS).contains("uPlot"));
    }

    #[tokio::test]
    async fn every_file_the_docs_page_loads_is_served() {
        every_reference_is_served(
            "/docs",
            &[
                "/assets/swagger-ui-bundle.js",
                "/assets/swagger-ui.css",
                "/assets/docs.js",
                "/assets/docs.css",
                "/",
            ],
        )
        .await;
        assert!(String::from_utf8_lossy(SWAGGER_JS).contains("SwaggerUIBundle"));
        // The document the page shows is the one the API serves.
        assert!(
            DOCS.contains(&format!("data-openapi=\"{}\"", crate::api::OPENAPI_PATH)),
            "{DOCS}"
        );
        assert!(DOCS_JS.contains("dataset.openapi"));
    }
}
