//! The dashboard's static files (placeholder until the assets land).

pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
}
