//! Forwarding one request to the app that serves it: the path made relative to the app's
//! context, then passed on as [`immutant_foundation::http`] does it (proxy headers set, bodies
//! streamed both ways, upgrades tunnelled), and pages that say why when no app can answer.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{self, HeaderValue};
use axum::http::{Request, Response, StatusCode, Uri};
use immutant_foundation::http::{page, prepare, request_host, respond};
use immutant_protocol::web::SECONDS_BUCKETS;

use super::Web;
use super::backend::InFlight;
use super::routes::{Route, Target};

/// The requests answered, by context and status.
const REQUESTS: &str = "immutant_http_requests_total";
/// How long requests took until their answer's head, by context.
const SECONDS: &str = "immutant_http_request_seconds";

/// Seconds a client is told to wait before it retries an app that is down.
const RETRY_AFTER_SECONDS: &str = "2";

/// Answers `request`, which came from `client`, with the app that serves it or a page that
/// says why none does.
pub async fn handle(web: Arc<Web>, client: SocketAddr, request: Request<Body>) -> Response<Body> {
    if request.method() == axum::http::Method::OPTIONS && request.uri() == "*" {
        // Asks the server itself (balancers' health checks): it answers.
        return Response::new(Body::empty());
    }
    let host = request_host(&request);
    let (route, in_flight) = {
        let path = request.uri().path();
        let routes = web.routes();
        let Some(route) = routes.find(&host, path) else {
            let contexts: Vec<String> = routes
                .for_host(&host)
                .map(|route| route.describe())
                .collect();
            return not_found(&web.node_name, &host, path, &contexts);
        };
        // Counted in flight before the routes are let go: a drain that begins after this
        // (it must take the routes to do so) waits for this request.
        let in_flight = match &route.target {
            Target::Up(backend) => Some(backend.begin()),
            _ => None,
        };
        (route.clone(), in_flight)
    };
    let started = std::time::Instant::now();
    let response = match (&route.target, in_flight) {
        (Target::Up(_), Some(in_flight)) => forward(&web, in_flight, &route, client, request).await,
        (Target::Down(why), _) => unavailable(&web.node_name, &route.app, why),
        _ => unavailable(&web.node_name, &route.app, "it is starting"),
    };
    // Until the response's head: its body streams on after.
    let context = route.context_path.clone();
    metrics::histogram!(SECONDS, "context" => context.clone())
        .record(started.elapsed().as_secs_f64());
    let status = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS, "context" => context, "status" => status).increment(1);
    response
}

/// Counts what an app answered on the connections it serves itself, as it reported it (see
/// [`immutant_protocol::Header::WebCounts`]): each time as the upper bound of its bucket, and
/// one longer than the longest bucket as twice that (only `+Inf` counts it).
pub fn record_answered(context_path: &str, statuses: &[(u16, u64)], seconds: &[u64]) {
    let context = context_path.to_string();
    for (status, count) in statuses {
        metrics::counter!(REQUESTS, "context" => context.clone(), "status" => status.to_string())
            .increment(*count);
    }
    let histogram = metrics::histogram!(SECONDS, "context" => context);
    let longest = SECONDS_BUCKETS[SECONDS_BUCKETS.len() - 1];
    for (bucket, count) in seconds.iter().enumerate() {
        let upper = SECONDS_BUCKETS
            .get(bucket)
            .copied()
            .unwrap_or(2.0 * longest);
        if *count > 0 {
            histogram.record_many(upper, usize::try_from(*count).unwrap_or(usize::MAX));
        }
    }
}

async fn forward(
    web: &Web,
    in_flight: InFlight,
    route: &Route,
    client: SocketAddr,
    mut request: Request<Body>,
) -> Response<Body> {
    let Some(uri) = relative_uri(request.uri(), route) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The request's target is not a path this node can pass on.",
        );
    };
    let from_balancer = web.trusts(client.ip());
    let upgrade = prepare(&mut request, client, &route.context_path, from_balancer);
    let node = &web.node_name;
    *request.uri_mut() = uri;
    match in_flight.backend().send(request).await {
        Ok(response) => respond(response, upgrade, in_flight),
        Err(error) if error.is_connect() => {
            unavailable(node, &route.app, "its process does not answer")
        }
        Err(error) => page(
            StatusCode::BAD_GATEWAY,
            &format!("{} failed to answer", route.app),
            &format!(
                "The app {} did not answer this request: {error}.",
                route.app
            ),
        ),
    }
}

/// The URI the app sees: its path relative to the context path, and the query.
fn relative_uri(uri: &Uri, route: &Route) -> Option<Uri> {
    let path = route.relative(uri.path());
    if !path.starts_with('/') {
        return None;
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    // Origin form: the connection is the app's socket already.
    path_and_query.parse().ok()
}

/// 503 for an app that cannot answer now, saying which and why.
fn unavailable(node: &str, app: &str, why: &str) -> Response<Body> {
    let mut response = page(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("{app} is unavailable"),
        &format!("The app {app} on node {node} cannot answer now: {why}. Try again in a moment."),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
}

/// 404 for a path no app is mounted at, naming the contexts that are.
fn not_found(node: &str, host: &str, path: &str, contexts: &[String]) -> Response<Body> {
    let mounted = match contexts {
        [] => "No web application is mounted on this node.".to_string(),
        contexts => format!(
            "Mounted here: {}.",
            contexts
                .iter()
                .map(|context| context.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let host = match host {
        "" => String::new(),
        host => format!(" for host {host}"),
    };
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("Immutant node {node}: no web application is mounted at {path}{host}. {mounted}"),
    )
}
