//! The balancer's side of a client request: the node it goes to (the one its session names,
//! else the enabled one with the most room), retried on another node when a node refuses the
//! connection and the request can safely be sent again, and streamed both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::header::{self, HeaderMap};
use axum::http::{Method, Request, Response, StatusCode, Uri};

use super::Balancer;
use crate::web::proxy::{page, prepare, request_host, respond};

/// The session cookie and path parameter whose value ends with the node's route.
const SESSION_COOKIE: &str = "JSESSIONID";
const SESSION_PARAMETER: &str = ";jsessionid=";

/// Answers a client's request through the node that should serve it.
pub async fn handle(
    balancer: Arc<Balancer>,
    client: SocketAddr,
    mut request: Request<Body>,
) -> Response<Body> {
    let host = request_host(&request);
    let path = request.uri().path().to_string();
    let sticky = session_route(request.headers(), &path);
    // Only a request without a body, of a method that means the same sent twice, may go to a
    // second node when the first refuses it.
    let retryable = is_idempotent(request.method()) && has_no_body(request.headers());
    let upgrade = prepare(&mut request, client, "/");
    let (parts, body) = request.into_parts();
    let mut body = Some(body);
    let mut tried: Vec<String> = Vec::new();
    loop {
        let target =
            balancer
                .table()
                .choose(&host, &path, sticky.as_deref(), &tried, balancer.silence());
        let Some(target) = target else {
            return match tried.is_empty() {
                true => no_node(&host, &path),
                false => page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "No node answers",
                    &format!("No node that serves {path} took the request; try again in a moment."),
                ),
            };
        };
        let guard = Guard::new(&[&target.node_in_flight, &target.context_in_flight]);
        let mut outgoing = Request::from_parts(parts.clone(), Body::empty());
        *outgoing.uri_mut() = node_uri(&target.address, &parts.uri);
        if let Some(body) = body.take() {
            *outgoing.body_mut() = body;
        }
        match balancer.client.request(outgoing).await {
            Ok(response) => return respond(response, upgrade, guard),
            Err(error) if error.is_connect() => {
                tracing::warn!(
                    "node {} refused a request ({error}); taking it out",
                    target.route
                );
                balancer.table().set_healthy(&target.route, false);
                if !retryable {
                    return page(
                        StatusCode::BAD_GATEWAY,
                        "The node is gone",
                        &format!(
                            "Node {} did not take the request; send it again.",
                            target.route
                        ),
                    );
                }
                tried.push(target.route);
            }
            Err(error) => {
                return page(
                    StatusCode::BAD_GATEWAY,
                    "The node failed to answer",
                    &format!(
                        "Node {} did not answer this request: {error}.",
                        target.route
                    ),
                );
            }
        }
    }
}

/// The node's route a request's session names: the part after the last `.` of its
/// `JSESSIONID` cookie, or of a `;jsessionid=` path parameter.
fn session_route(headers: &HeaderMap, path: &str) -> Option<String> {
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .map(str::to_string);
    let from_path = || {
        let start = path.find(SESSION_PARAMETER)? + SESSION_PARAMETER.len();
        let rest = &path[start..];
        Some(
            rest.split(['/', ';', '?'])
                .next()
                .unwrap_or(rest)
                .to_string(),
        )
    };
    let id = from_cookie.or_else(from_path)?;
    let (_, route) = id.rsplit_once('.')?;
    (!route.is_empty()).then(|| route.to_string())
}

fn is_idempotent(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

fn has_no_body(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|length| length == "0")
}

/// The request's target at the node: the same path and query.
fn node_uri(address: &str, uri: &Uri) -> Uri {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("http://{address}{path_and_query}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("http://invalid/"))
}

fn no_node(host: &str, path: &str) -> Response<Body> {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("No node has an application enabled at {path} for host {host}."),
    )
}

/// Counts a request in flight (to its node and its context) while it lasts.
struct Guard(Vec<Arc<AtomicUsize>>);

impl Guard {
    fn new(counters: &[&Arc<AtomicUsize>]) -> Guard {
        for counter in counters {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Guard(counters.iter().map(|c| Arc::clone(c)).collect())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for counter in &self.0 {
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_session_names_its_node_in_the_cookie_or_the_path() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; JSESSIONID=abc.one"),
        );
        assert_eq!(session_route(&headers, "/app").as_deref(), Some("one"));
        let none = HeaderMap::new();
        assert_eq!(
            session_route(&none, "/app/x;jsessionid=abc.two?q=1").as_deref(),
            Some("two")
        );
        assert_eq!(session_route(&none, "/app/x").as_deref(), None);
        headers.insert(header::COOKIE, HeaderValue::from_static("JSESSIONID=abc"));
        assert_eq!(session_route(&headers, "/app").as_deref(), None);
    }

    #[test]
    fn only_bodiless_idempotent_requests_are_sent_again() {
        let mut headers = HeaderMap::new();
        assert!(is_idempotent(&Method::GET) && has_no_body(&headers));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(!has_no_body(&headers));
        assert!(!is_idempotent(&Method::POST));
    }
}
