//! {{name}}: an Immutant web app. `main` is its bootstrap: it mounts an axum router at the
//! app's context path (`/{{name}}` unless `context-path` says otherwise) with HTTP sessions,
//! which a cluster replicates: kill the node that served you and the next one goes on counting.

use immutant::App;
use immutant::web::axum::response::Html;
use immutant::web::axum::routing::get;
use immutant::web::axum::{Json, Router};
use immutant::web::sessions::Session;

#[tokio::main]
async fn main() -> immutant::Result<()> {
    let app = App::connect().await?;
    let node = app.node_name().to_string();
    let api_node = node.clone();
    let router = Router::new()
        .route(
            "/",
            get(move |session: Session| async move {
                let visits = visit(&session).await;
                Html(format!(
                    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{{name}}</title>\n<style>body{{font-family:sans-serif;max-width:40em;margin:3em auto;color:#222}}strong{{color:#b3261e}}</style></head>\n<body><h1>{{name}}</h1>\n<p>You have been here <strong id=\"visits\">{visits}</strong> times.</p>\n<p>This page was served by node <strong id=\"node\">{node}</strong>.</p></body></html>\n"
                ))
            }),
        )
        .route(
            "/api",
            get(move |session: Session| async move {
                let visits = visit(&session).await;
                Json(serde_json::json!({ "visits": visits, "node": api_node }))
            }),
        )
        .layer(app.sessions().layer().await?);
    app.web(router).await?;
    app.run().await
}

/// Counts one more visit in the session; answers how many there have been.
async fn visit(session: &Session) -> u64 {
    let visits = session.get::<u64>("visits").await.ok().flatten().unwrap_or(0) + 1;
    if let Err(error) = session.insert("visits", visits).await {
        eprintln!("cannot keep the visit count in the session: {error}");
    }
    visits
}
