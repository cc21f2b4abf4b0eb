//! What the node and an app's web server agree on about a request: which app it is for (by its
//! host and the longest context path that prefixes its path), the path the app sees, and the
//! `X-Forwarded-*` headers that tell the app where the request came from. The node routes the
//! first request of a client's connection; an app that serves the connection itself (see
//! [`crate::handoff`]) routes the ones after it by the same rules.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// The buckets of every `_seconds` histogram a node keeps: from half a millisecond to a minute.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Where an app's web handler is mounted on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Mounted {
    pub app: String,
    /// `/` or `/name`, never with a slash at the end (see [`normalize_context_path`]).
    pub context_path: String,
    /// The virtual hosts it answers (lower case, no port); none: every host.
    pub hosts: Vec<String>,
}

impl Mounted {
    /// Whether `path` is under this context path (whole segments only: `/app` covers `/app`
    /// and `/app/x`, not `/apple`).
    pub fn covers(&self, path: &str) -> bool {
        self.context_path == "/"
            || path
                .strip_prefix(&self.context_path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// `path` as the app sees it: the context path taken off, never empty.
    pub fn relative<'p>(&self, path: &'p str) -> &'p str {
        if self.context_path == "/" {
            return path;
        }
        match path.strip_prefix(&self.context_path) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }

    /// The context path and its hosts, as pages show them.
    pub fn describe(&self) -> String {
        match self.hosts.is_empty() {
            true => self.context_path.clone(),
            false => format!("{} (on {})", self.context_path, self.hosts.join(", ")),
        }
    }
}

/// Whatever holds a [`Mounted`] (a node's route, with where its requests go).
pub trait AsMounted {
    fn mounted(&self) -> &Mounted;
}

impl AsMounted for Mounted {
    fn mounted(&self) -> &Mounted {
        self
    }
}

impl<T: AsMounted> AsMounted for std::sync::Arc<T> {
    fn mounted(&self) -> &Mounted {
        (**self).mounted()
    }
}

/// The mounts a request for `host` may take: those on that virtual host, or if none names it,
/// those on every host (JBoss's default host).
pub fn for_host<'a, M: AsMounted>(mounts: &'a [M], host: &str) -> impl Iterator<Item = &'a M> {
    let named = mounts
        .iter()
        .any(|mount| mount.mounted().hosts.iter().any(|h| h == host));
    mounts.iter().filter(move |mount| {
        let hosts = &mount.mounted().hosts;
        match named {
            true => hosts.iter().any(|h| h == host),
            false => hosts.is_empty(),
        }
    })
}

/// The mount for a request to `host` (lower case, no port) and `path`: the longest context
/// path that covers the path; of two alike, the app whose name sorts first.
pub fn find<'a, M: AsMounted>(mounts: &'a [M], host: &str, path: &str) -> Option<&'a M> {
    for_host(mounts, host)
        .filter(|mount| mount.mounted().covers(path))
        .max_by(|a, b| {
            let (a, b) = (a.mounted(), b.mounted());
            let longer = a.context_path.len().cmp(&b.context_path.len());
            longer.then_with(|| b.app.cmp(&a.app))
        })
}

/// A context path as a mount keeps it: with a slash in front and none at the end.
pub fn normalize_context_path(path: &str) -> String {
    let trimmed = path.trim().trim_matches('/');
    format!("/{trimmed}")
}

/// A request's host as routes name it: lower case, without its port (borrowed when it is
/// lower case already, as nearly every client sends it).
pub fn host_name(host: &str) -> std::borrow::Cow<'_, str> {
    let name = match host.starts_with('[') {
        true => host.split_inclusive(']').next().unwrap_or(host),
        false => host.split(':').next().unwrap_or(host),
    };
    match name.bytes().any(|byte| byte.is_ascii_uppercase()) {
        true => std::borrow::Cow::Owned(name.to_ascii_lowercase()),
        false => std::borrow::Cow::Borrowed(name),
    }
}

/// Sets the `X-Forwarded-*` headers: the client's address (added to any list already there,
/// whose earlier entries are only what the client says), the scheme it came with, the host it
/// asked for (which stays the request's `Host`), and the context path taken off. The scheme and
/// host a balancer of the node says (`from_balancer`: one it speaks MCMP to) are kept: it saw
/// the client. Other headers a client could use to pass itself off as someone else
/// (`Forwarded`, `X-Real-IP`, `X-Forwarded-Port`) are dropped.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    host: Option<HeaderValue>,
    context_path: &str,
    scheme: &'static str,
    from_balancer: bool,
) {
    // Room for what is set below, at once.
    headers.reserve(4);
    // Most requests say none of these: then only what is set below is done.
    let said = headers
        .keys()
        .any(|name| name.as_str().starts_with("x-") || name == header::FORWARDED);
    let for_ = match headers
        .get(X_FORWARDED_FOR)
        .and_then(|value| value.to_str().ok())
    {
        Some(list) => format!("{list}, {client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(for_)) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let (mut said_proto, mut said_host) = (false, false);
    if said {
        for unsaid in [header::FORWARDED, X_REAL_IP, X_FORWARDED_PORT] {
            headers.remove(unsaid);
        }
        // What the balancer said is the last of a list (a proxy adds to what came before it).
        for name in [X_FORWARDED_PROTO, X_FORWARDED_HOST] {
            let last = headers
                .get(&name)
                .and_then(|value| value.to_str().ok())
                .and_then(|list| list.rsplit(',').next())
                .and_then(|last| HeaderValue::from_str(last.trim()).ok());
            if let Some(last) = last {
                headers.insert(name, last);
            }
        }
        said_proto = from_balancer && headers.contains_key(X_FORWARDED_PROTO);
        said_host = from_balancer && headers.contains_key(X_FORWARDED_HOST);
    }
    if !said_proto {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    if let Some(host) = host {
        if !said_host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        headers.insert(header::HOST, host);
    } else if !said_host && said {
        headers.remove(X_FORWARDED_HOST);
    }
    match HeaderValue::from_str(context_path) {
        Ok(prefix) if context_path != "/" => {
            headers.insert(X_FORWARDED_PREFIX, prefix);
        }
        _ if said => {
            headers.remove(X_FORWARDED_PREFIX);
        }
        _ => {}
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that belong to one connection, not to the request: never passed on.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether a request asks for an upgrade the hop can carry: not to `h2c`, which would turn the
/// connection to the app into one nothing in between understands (h2c smuggling).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    !upgrade.is_empty()
        && !upgrade
            .iter()
            .any(|protocol| protocol.eq_ignore_ascii_case("h2c"))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Takes out the headers that belong to one connection (and those the `Connection` header
/// names); an upgrade keeps `Connection: upgrade` and `Upgrade`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // Most requests have none: then there is nothing to take out.
    let hop_by_hop = HOP_BY_HOP;
    let any = headers
        .keys()
        .any(|name| hop_by_hop.contains(name) || name == header::UPGRADE);
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| !(upgrading && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in hop_by_hop {
        headers.remove(name);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(app: &str, context_path: &str, hosts: &[&str]) -> Mounted {
        Mounted {
            app: app.to_string(),
            context_path: context_path.to_string(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn the_longest_context_path_that_covers_whole_segments_wins() {
        let mounts = [
            mount("root", "/", &[]),
            mount("app", "/app", &[]),
            mount("deep", "/app/deep", &[]),
        ];
        let app = |path| find(&mounts, "localhost", path).map(|m| m.app.as_str());
        assert_eq!(app("/app"), Some("app"));
        assert_eq!(app("/app/x"), Some("app"));
        assert_eq!(app("/app/deep/x"), Some("deep"));
        assert_eq!(app("/apple"), Some("root"));
        assert_eq!(app("/"), Some("root"));
    }

    #[test]
    fn a_virtual_host_sees_only_its_apps_and_others_see_the_rest() {
        let mounts = [
            mount("any", "/", &[]),
            mount("shop", "/", &["shop.example"]),
        ];
        assert_eq!(find(&mounts, "shop.example", "/x").unwrap().app, "shop");
        assert_eq!(find(&mounts, "localhost", "/x").unwrap().app, "any");
    }

    #[test]
    fn of_two_apps_at_one_context_the_name_that_sorts_first_wins() {
        let mounts = [mount("zeta", "/x", &[]), mount("alpha", "/x", &[])];
        assert_eq!(find(&mounts, "localhost", "/x").unwrap().app, "alpha");
    }

    #[test]
    fn nothing_covers_a_path_outside_every_context() {
        let mounts = [mount("app", "/app", &[])];
        assert!(find(&mounts, "localhost", "/other").is_none());
    }

    #[test]
    fn paths_are_relative_to_the_context() {
        let app = mount("app", "/app", &[]);
        assert_eq!(app.relative("/app"), "/");
        assert_eq!(app.relative("/app/a/b"), "/a/b");
        assert_eq!(mount("root", "/", &[]).relative("/a"), "/a");
    }

    #[test]
    fn context_paths_are_normalized() {
        assert_eq!(normalize_context_path("app/"), "/app");
        assert_eq!(normalize_context_path("/"), "/");
        assert_eq!(normalize_context_path(""), "/");
        assert_eq!(normalize_context_path("/a/b/"), "/a/b");
    }

    #[test]
    fn forwarded_headers_add_to_what_a_proxy_before_said() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let host = Some(HeaderValue::from_static("example.com:8080"));
        set_forwarded(&mut headers, client, host, "/app", "http", false);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(headers["x-forwarded-host"], "example.com:8080");
        assert_eq!(headers["x-forwarded-prefix"], "/app");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn a_balancer_says_the_scheme_and_host_a_client_cannot() {
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let claims = || {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
            headers.insert(
                "x-forwarded-host",
                HeaderValue::from_static("evil.example, shop.example"),
            );
            headers
        };
        let mut from_client = claims();
        set_forwarded(&mut from_client, client, None, "/", "http", false);
        assert_eq!(from_client["x-forwarded-proto"], "http");
        assert!(from_client.get("x-forwarded-host").is_none());
        let mut from_balancer = claims();
        set_forwarded(&mut from_balancer, client, None, "/", "http", true);
        assert_eq!(from_balancer["x-forwarded-proto"], "https");
        assert_eq!(from_balancer["x-forwarded-host"], "shop.example");
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1, "nothing to take out");
        headers.insert(header::CONNECTION, HeaderValue::from_static("x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut headers, false);
        let left: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
        assert_eq!(left, ["host"]);
    }

    #[test]
    fn hosts_lose_their_ports_and_case() {
        assert_eq!(host_name("Example.com:8080"), "example.com");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("example.com"), "example.com");
        assert_eq!(host_name(""), "");
    }
}
