//! The web console at `/console`: one page, its script and its style, bundled into the binary
//! (nothing to build or fetch at install time). The page reads `/status` and calls the
//! management API's operations with the token the user gives it; it holds no data itself.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Scripts and styles only from the node itself, no inline code, no framing by other pages
/// (clickjacking), no referrer leaving it.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The console's routes: served without the token (they are the same for everyone); what they
/// show comes from routes that ask for it.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let file = |content_type: &'static str, body: &'static str| {
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CONTENT_SECURITY_POLICY, POLICY),
                    (header::X_FRAME_OPTIONS, "DENY"),
                    (header::REFERRER_POLICY, "no-referrer"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response()
        })
    };
    Router::new()
        .route("/console", file("text/html; charset=utf-8", PAGE))
        .route("/console/", file("text/html; charset=utf-8", PAGE))
        .route(
            "/console/console.js",
            file("text/javascript; charset=utf-8", SCRIPT),
        )
        .route(
            "/console/console.css",
            file("text/css; charset=utf-8", STYLE),
        )
}
