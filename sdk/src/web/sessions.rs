//! HTTP sessions that outlive the node that made them, what `<distributable/>` and AS7's
//! Infinispan web cache gave servlet apps. [`tower_sessions`] does the session handling; its
//! records live in the app's cache `immutant.web.sessions/<app>`: distributed with two owners
//! in a cluster (so a session survives the death of the node that made it), local on a
//! standalone node.
//!
//! ```no_run
//! use immutant::web::axum::{Router, routing::get};
//! use immutant::web::sessions::Session;
//!
//! # async fn example() -> immutant::Result<()> {
//! let app = immutant::App::connect().await?;
//! let visits = |session: Session| async move {
//!     let n: u64 = session.get("visits").await.ok().flatten().unwrap_or(0) + 1;
//!     let _ = session.insert("visits", n).await;
//!     format!("visit {n}")
//! };
//! let sessions = app.sessions().layer().await?;
//! app.web(Router::new().route("/", get(visits)).layer(sessions)).await?;
//! app.run().await
//! # }
//! ```
//!
//! The cookie is `JSESSIONID=<id>.<node>`: the node's name is the route that mod_cluster and
//! Java balancers keep a session's requests on. It is `HttpOnly`, `SameSite=Lax`, `Secure`
//! when the node says the request came over https (`X-Forwarded-Proto`; a node serving plain
//! HTTP says `http` whatever the client claims), and scoped to the context path. A
//! session lapses after 30 minutes without a request (the servlet default) unless
//! [`SessionsBuilder::idle_timeout`] says otherwise. `Session::cycle_id` gives a session a new
//! id (after a login).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};
use axum::http::{Request, Response};
use immutant_protocol::{CacheMode, Expiry};
use tower_layer::Layer;
use tower_sessions::SessionManagerLayer;
use tower_sessions::cookie::SameSite;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

pub use tower_sessions::Session;

use crate::cache::{Cache, CacheBuilder};
use crate::error::Result;

/// The session cookie's name, as every servlet container and balancer knows it.
pub const COOKIE_NAME: &str = "JSESSIONID";

/// How long a session lives without a request, by default: the servlet default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Sessions to set up: `app.sessions().idle_timeout(d).layer().await?`.
pub struct SessionsBuilder {
    cache: CacheBuilder,
    route: String,
    context_path: String,
    idle_timeout: Duration,
}

impl SessionsBuilder {
    pub(crate) fn new(cache: CacheBuilder, route: &str, context_path: &str) -> SessionsBuilder {
        SessionsBuilder {
            cache,
            route: route.to_string(),
            context_path: context_path.to_string(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// How long a session lives without a request (30 minutes by default).
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Opens the sessions' cache and makes the layer to put on the app's router.
    pub async fn layer(self) -> Result<SessionLayer> {
        let cache = self
            .cache
            .mode(CacheMode::Distributed)
            .owners(2)
            .lookup_or_create()
            .await?;
        let idle = time::Duration::try_from(self.idle_timeout).unwrap_or(time::Duration::MAX);
        let sessions = SessionManagerLayer::new(CacheStore { cache })
            .with_name(COOKIE_NAME)
            .with_http_only(true)
            .with_same_site(SameSite::Lax)
            // Set per request, from the scheme the client used.
            .with_secure(false)
            .with_path(self.context_path)
            .with_expiry(tower_sessions::Expiry::OnInactivity(idle))
            // Every request saves its session, so that idle time counts from the last request
            // on whichever node served it.
            .with_always_save(true);
        Ok(SessionLayer {
            sessions,
            route: self.route.into(),
        })
    }
}

/// The layer that gives every request its [`Session`]: `router.layer(layer)`.
#[derive(Clone)]
pub struct SessionLayer {
    sessions: SessionManagerLayer<CacheStore>,
    route: Arc<str>,
}

impl<S> Layer<S> for SessionLayer {
    type Service = RoutedSessions<<SessionManagerLayer<CacheStore> as Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        RoutedSessions {
            inner: self.sessions.layer(inner),
            route: self.route.clone(),
        }
    }
}

/// Sessions whose cookie carries the node's route: `<id>.<route>` goes out, and the route is
/// taken off what comes in (whichever node's route it names).
#[derive(Clone)]
pub struct RoutedSessions<S> {
    inner: S,
    route: Arc<str>,
}

impl<S, B, R> tower_service::Service<Request<B>> for RoutedSessions<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let secure = request
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
        unroute_cookies(request.headers_mut());
        let route = self.route.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            route_cookies(response.headers_mut(), &route, secure);
            Ok(response)
        })
    }
}

/// Takes the route off the session cookie of a request: `JSESSIONID=<id>.<route>` becomes
/// `JSESSIONID=<id>`.
fn unroute_cookies(headers: &mut HeaderMap) {
    let prefix = format!("{COOKIE_NAME}=");
    let unrouted: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .map(|value| match value.to_str() {
            Ok(text) if text.contains(&prefix) => {
                let pairs: Vec<String> = text
                    .split(';')
                    .map(|pair| {
                        let pair = pair.trim();
                        match pair.strip_prefix(&prefix) {
                            Some(id) => format!("{prefix}{}", id.split('.').next().unwrap_or(id)),
                            None => pair.to_string(),
                        }
                    })
                    .collect();
                HeaderValue::from_str(&pairs.join("; ")).unwrap_or_else(|_| value.clone())
            }
            _ => value.clone(),
        })
        .collect();
    headers.remove(COOKIE);
    for value in unrouted {
        headers.append(COOKIE, value);
    }
}

/// Puts the route on the session cookie of a response (not on one that removes it), and
/// marks it `Secure` when the client came over https.
fn route_cookies(headers: &mut HeaderMap, route: &str, secure: bool) {
    let prefix = format!("{COOKIE_NAME}=");
    let cookies: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
    if !cookies
        .iter()
        .any(|cookie| cookie.as_bytes().starts_with(prefix.as_bytes()))
    {
        return;
    }
    headers.remove(SET_COOKIE);
    for cookie in cookies {
        let text = cookie.to_str().unwrap_or_default();
        let routed = match text.strip_prefix(&prefix) {
            Some(rest) => {
                let (id, attributes) = rest.split_once(';').unwrap_or((rest, ""));
                let id = match id.is_empty() {
                    true => String::new(),
                    false => format!("{id}.{route}"),
                };
                let secure = if secure { "; Secure" } else { "" };
                HeaderValue::from_str(&format!("{prefix}{id};{attributes}{secure}")).ok()
            }
            None => Some(cookie.clone()),
        };
        headers.append(SET_COOKIE, routed.unwrap_or(cookie));
    }
}

/// Session records in an Immutant cache, each expiring when its session does.
#[derive(Clone)]
pub struct CacheStore {
    cache: Cache,
}

impl std::fmt::Debug for CacheStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStore")
            .field("cache", &self.cache.name())
            .finish()
    }
}

/// How long a session call keeps being tried again while the cluster changes under it (a
/// member that stopped answering is out of the view within about half a second; a loaded
/// machine takes longer).
const RETRY_FOR: Duration = Duration::from_secs(5);

/// Runs a cache call, and again while the node refuses it (waiting 50 ms, then twice as long
/// each time; no new try begins after about 5 s): a member leaving or joining moves
/// sessions to new owners, and a call made in that moment is refused. Each call here may run
/// twice without harm (a `create` that ran twice finds its own record and takes a new id; the
/// orphan lapses with its session's expiry).
async fn retried<T, F, Fut>(mut call: F) -> session_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<T>>,
{
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(50);
    loop {
        match call().await {
            Err(crate::error::Error::Node(_)) if started.elapsed() + wait < RETRY_FOR => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            outcome => return outcome.map_err(backend),
        }
    }
}

fn backend(error: crate::error::Error) -> session_store::Error {
    session_store::Error::Backend(error.to_string())
}

/// The expiry of a record: when its session lapses.
fn expiry_of(record: &Record) -> Expiry {
    let left = record.expiry_date - time::OffsetDateTime::now_utc();
    Expiry {
        ttl_ms: Some(left.whole_milliseconds().clamp(1, u64::MAX as i128) as u64),
        idle_ms: None,
    }
}

#[async_trait::async_trait]
impl SessionStore for CacheStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // A new id until none is taken: two sessions never share one.
        loop {
            let expiry = expiry_of(record);
            let key = record.id.to_string();
            let taken = retried(|| {
                self.cache
                    .put_if_absent_with(key.as_str(), &*record, Some(expiry))
            })
            .await?;
            if taken.is_none() {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let key = record.id.to_string();
        retried(|| self.cache.put_with(key.as_str(), record, expiry_of(record))).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let key = id.to_string();
        let record: Option<Record> = retried(|| self.cache.get(key.as_str())).await?;
        Ok(record.filter(|record| record.expiry_date > time::OffsetDateTime::now_utc()))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let key = id.to_string();
        retried(|| self.cache.remove(key.as_str()))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_comes_off_the_cookie_a_request_brings() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; JSESSIONID=abc.one; b=2"),
        );
        unroute_cookies(&mut headers);
        assert_eq!(headers[COOKIE], "a=1; JSESSIONID=abc; b=2");
    }

    #[test]
    fn every_cookie_header_is_kept() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.append(COOKIE, HeaderValue::from_static("JSESSIONID=abc.one"));
        unroute_cookies(&mut headers);
        let values: Vec<&str> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(values, ["a=1", "JSESSIONID=abc"]);
    }

    #[test]
    fn the_route_goes_on_the_cookie_a_response_sets() {
        let mut headers = HeaderMap::new();
        headers.append(SET_COOKIE, HeaderValue::from_static("other=1; Path=/"));
        headers.append(
            SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=abc; HttpOnly; SameSite=Lax; Path=/app"),
        );
        route_cookies(&mut headers, "two", true);
        let cookies: Vec<&str> = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|c| c.to_str().unwrap())
            .collect();
        assert_eq!(
            cookies,
            [
                "other=1; Path=/",
                "JSESSIONID=abc.two; HttpOnly; SameSite=Lax; Path=/app; Secure"
            ]
        );
    }

    #[test]
    fn a_removal_cookie_gets_no_route() {
        let mut headers = HeaderMap::new();
        headers.append(
            SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=; Max-Age=0"),
        );
        route_cookies(&mut headers, "two", false);
        assert_eq!(headers[SET_COOKIE], "JSESSIONID=; Max-Age=0");
    }
}
