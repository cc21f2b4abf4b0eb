//! The web app the end-to-end tests deploy: each route shows one thing the node must get right.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, Request};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use immutant::web::ContextPath;
use immutant::web::sessions::Session;

#[tokio::main]
async fn main() -> immutant::Result<()> {
    let app = immutant::App::connect().await?;
    let node = app.node_name().to_string();
    let router = Router::new()
        .route("/", get(move || async move { format!("hello from {node}\n") }))
        .route("/request", any(request))
        .route("/pid", get(|| async { std::process::id().to_string() }))
        .route("/slow", get(slow))
        .route("/upload", post(upload))
        .route("/download", get(download))
        .route("/ws", get(websocket))
        .route("/visits", get(visits))
        .route("/login", get(login))
        .layer(app.sessions().layer().await?);
    if let Some(port) = app.property("webprobe.direct-port").and_then(|port| port.parse().ok()) {
        serve_directly(port, router.clone()).await?;
    }
    app.web(router).await?;
    println!("web mounted at {}", app.context_path());
    app.run().await
}

/// For the web benchmark: the same handler, served by this process alone on 127.0.0.1:`port`,
/// as fast as the app itself answers (no node in between).
async fn serve_directly(port: u16, router: Router) -> immutant::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(())
}

/// What the app saw of the request: its path, the context path, and the proxy headers.
async fn request(Extension(context): Extension<ContextPath>, request: Request) -> Json<serde_json::Value> {
    let headers: BTreeMap<String, String> = forwarded(request.headers());
    Json(serde_json::json!({
        "path": request.uri().path(),
        "query": request.uri().query(),
        "context-path": context.0,
        "method": request.method().as_str(),
        "host": request.headers().get("host").and_then(|h| h.to_str().ok()),
        "headers": headers,
    }))
}

fn forwarded(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-forwarded-"))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_string()))
        .collect()
}

/// Answers after `ms` milliseconds, with this process's id.
async fn slow(Query(query): Query<BTreeMap<String, u64>>) -> String {
    let ms = query.get("ms").copied().unwrap_or(100);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    std::process::id().to_string()
}

/// Reads the body as it streams in; answers how many bytes and their sum.
async fn upload(request: Request) -> String {
    let mut body = request.into_body().into_data_stream();
    let (mut bytes, mut sum) = (0u64, 0u64);
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return "the upload broke off".to_string();
        };
        bytes += chunk.len() as u64;
        sum = chunk.iter().fold(sum, |sum, byte| sum.wrapping_add(*byte as u64));
    }
    format!("{bytes} {sum}")
}

/// Streams `size` bytes (each the low byte of its offset), made as they go out.
async fn download(Query(query): Query<BTreeMap<String, u64>>) -> Response {
    const CHUNK: u64 = 64 * 1024;
    let size = query.get("size").copied().unwrap_or(0);
    let chunks = futures_util::stream::iter((0..size.div_ceil(CHUNK)).map(move |n| {
        let start = n * CHUNK;
        let end = (start + CHUNK).min(size);
        let chunk: Vec<u8> = (start..end).map(|offset| offset as u8).collect();
        Ok::<_, std::io::Error>(Bytes::from(chunk))
    }));
    axum::body::Body::from_stream(chunks).into_response()
}

/// Counts the session's visits: `<n> <node>`.
async fn visits(session: Session) -> String {
    let n: u64 = session.get("visits").await.ok().flatten().unwrap_or(0) + 1;
    let _ = session.insert("visits", n).await;
    format!("{n} {}", std::env::var("IMMUTANT_NODE").unwrap_or_default())
}

/// Gives the session a new id, as an app does after a login; the visits stay.
async fn login(session: Session) -> &'static str {
    let _ = session.cycle_id().await;
    "logged in"
}

/// Echoes every text and binary message.
async fn websocket(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            let echo = match message {
                Message::Text(text) => Message::Text(format!("echo: {text}").into()),
                Message::Binary(bytes) => Message::Binary(bytes),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(echo).await.is_err() {
                break;
            }
        }
    })
}
