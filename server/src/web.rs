//! Web hosting on the node's HTTP port (8080 plus the offset).

use axum::Router;
use axum::http::{StatusCode, Uri};

/// The HTTP port's routes. With no web app mounted, every path is not found, and says so.
pub fn router(node_name: String) -> Router {
    Router::new().fallback(move |uri: Uri| async move {
        (
            StatusCode::NOT_FOUND,
            format!(
                "Immutant node {node_name}: no web application is mounted at {}\n",
                uri.path()
            ),
        )
    })
}
