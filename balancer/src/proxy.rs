//! The balancer's side of a client request: the node it goes to (the one its session names,
//! else the enabled one with the most room), sent again to another node when the request can
//! safely be sent twice and its node refuses it, fails with it, or is found unreachable while
//! it waits; streamed both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{self, HeaderMap};
use axum::http::{Method, Request, Response, StatusCode, Uri};

use super::table::BalancerSettings;
use super::{Balancer, pool};
use axum::extract::ConnectInfo;
use immutant_foundation::edge::{Answerer, Worker};
use immutant_foundation::http::{page, prepare, request_host, respond};

/// The balancer's client ports: every request goes to a node, with no routing in front.
#[derive(Clone)]
pub struct Proxying(pub Arc<Balancer>);

impl Answerer for Proxying {
    fn answer(&self, request: Request<Body>) -> impl Future<Output = Response<Body>> + Send {
        // Both are set by the port for every request.
        let client = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0);
        let worker = request
            .extensions()
            .get::<Worker>()
            .copied()
            .unwrap_or(Worker(0));
        handle(self.0.clone(), worker, client, request)
    }
}

/// Answers a client's request through the node that should serve it.
pub async fn handle(
    balancer: Arc<Balancer>,
    worker: Worker,
    client: SocketAddr,
    mut request: Request<Body>,
) -> Response<Body> {
    let host = request_host(&request);
    let path = request.uri().path().to_string();
    // Only a request without a body, of a method that means the same sent twice, may go to a
    // second node when the first refuses it, fails with it or is lost.
    let retryable = is_idempotent(request.method())
        && http_body::Body::size_hint(request.body()).exact() == Some(0);
    // The balancer sees clients themselves: what they say of where they came from is not kept.
    let upgrade = prepare(&mut request, client, "/", false);
    let (parts, body) = request.into_parts();
    let mut body = Some(body);
    let mut tried: Vec<String> = Vec::new();
    loop {
        let (target, known) = {
            let mut table = balancer.table();
            let session =
                |settings: &BalancerSettings| session_route(&parts.headers, &path, settings);
            let target = table.choose(&host, &path, session, &tried);
            (target, table.covers(&path))
        };
        let Some(target) = target else {
            return match known {
                false => no_node(&host, &path),
                true => unavailable(&path),
            };
        };
        let Some(uri) = node_uri(&parts.uri) else {
            return page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The request's target is not a path this balancer can pass on.",
            );
        };
        let mut outgoing = Request::from_parts(parts.clone(), Body::empty());
        *outgoing.uri_mut() = uri;
        if let Some(body) = body.take() {
            *outgoing.body_mut() = body;
        }
        let mut target = target;
        let answer = tokio::select! {
            answer = balancer.pool(worker).send(&target.address, outgoing, || pool::connect(&target.address)) => answer,
            // A node that stops answering (paused, or cut off) is found out by the health
            // checks; a request that may be sent again does not wait for it any longer.
            _ = target.lost.as_mut(), if retryable => {
                tracing::warn!("node {} is unreachable; sending its request elsewhere", target.route);
                tried.push(target.route.clone());
                continue;
            }
        };
        match answer {
            // The target, counting the request in flight, lives as long as the exchange.
            Ok(response) => return respond(response, upgrade, target),
            Err(error) => {
                if error.is_connect() {
                    tracing::warn!(
                        "node {} refused a request ({error}); passing it over",
                        target.route
                    );
                    let mut table = balancer.table();
                    // Only the process it was sent to: the route may be another's by now.
                    if table
                        .node(&target.route)
                        .is_some_and(|node| node.id == target.node_id)
                    {
                        table.set_healthy(&target.route, false);
                    }
                }
                // A request that means the same sent twice goes to another node, whether the
                // node refused it or died while it had it.
                if !retryable {
                    return page(
                        StatusCode::BAD_GATEWAY,
                        "The node failed to answer",
                        &format!(
                            "Node {} did not answer this request ({error}); send it again.",
                            target.route
                        ),
                    );
                }
                tried.push(target.route.clone());
            }
        }
    }
}

/// The node's route a request's session names: the part after the first `.` of its session
/// cookie (`JSESSIONID` unless the balancer says otherwise), or of its session path parameter
/// (`;jsessionid=`); a route may hold dots, as a host name does; an id never does.
fn session_route(headers: &HeaderMap, path: &str, settings: &BalancerSettings) -> Option<String> {
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            pair.trim()
                .strip_prefix(settings.cookie.as_str())?
                .strip_prefix('=')
        })
        .map(str::to_string);
    let from_path = || {
        let parameter = format!(";{}=", settings.path_parameter);
        let start = path.find(&parameter)? + parameter.len();
        let rest = &path[start..];
        Some(
            rest.split(['/', ';', '?'])
                .next()
                .unwrap_or(rest)
                .to_string(),
        )
    };
    let id = from_cookie.or_else(from_path)?;
    let (_, route) = id.split_once('.')?;
    (!route.is_empty()).then(|| route.to_string())
}

fn is_idempotent(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

/// The request's target at the node: the same path and query (the connection is the node's).
fn node_uri(uri: &Uri) -> Option<Uri> {
    uri.path_and_query()
        .map_or("/", |path| path.as_str())
        .parse()
        .ok()
}

/// 503 for a path that nodes serve, when none of them can take the request now.
fn unavailable(path: &str) -> Response<Body> {
    let mut response = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "No node can answer",
        &format!("No node that serves {path} can take the request now; try again in a moment."),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("2"),
    );
    response
}

fn no_node(host: &str, path: &str) -> Response<Body> {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("No node has an application enabled at {path} for host {host}."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_session_names_its_node_in_the_cookie_or_the_path() {
        let settings = BalancerSettings::new("mycluster");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; JSESSIONID=abc.one"),
        );
        assert_eq!(
            session_route(&headers, "/app", &settings).as_deref(),
            Some("one")
        );
        let none = HeaderMap::new();
        assert_eq!(
            session_route(&none, "/app/x;jsessionid=abc.two?q=1", &settings).as_deref(),
            Some("two")
        );
        assert_eq!(session_route(&none, "/app/x", &settings).as_deref(), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("JSESSIONID=abc.web1.example.com"),
        );
        assert_eq!(
            session_route(&headers, "/app", &settings).as_deref(),
            Some("web1.example.com")
        );
        headers.insert(header::COOKIE, HeaderValue::from_static("JSESSIONID=abc"));
        assert_eq!(session_route(&headers, "/app", &settings).as_deref(), None);
        let named = BalancerSettings {
            cookie: "SID".to_string(),
            path_parameter: "sid".to_string(),
            ..settings
        };
        headers.insert(header::COOKIE, HeaderValue::from_static("SID=abc.three"));
        assert_eq!(
            session_route(&headers, "/app", &named).as_deref(),
            Some("three")
        );
        assert_eq!(
            session_route(&none, "/app;sid=abc.four", &named).as_deref(),
            Some("four")
        );
    }

    #[test]
    fn only_idempotent_methods_are_sent_again() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::HEAD));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PUT));
    }
}
