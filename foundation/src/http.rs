//! HTTP proxying as both the node's web port and the balancer do it: a client's request made
//! ready to pass on (hop-by-hop headers out, `X-Forwarded-*` in, HTTP/2 cookies joined), the
//! answer streamed back or an upgrade tunnelled, and small pages that say why when there is no
//! answer.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use immutant_protocol::web::{host_name, is_upgrade, remove_hop_by_hop, set_forwarded};

use crate::edge::OverTls;

/// The request's host, lower case and without a port: its `Host` header, or the authority of
/// its URI (HTTP/2).
pub fn request_host(request: &Request<Body>) -> String {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    host_name(host).into_owned()
}

/// The client's side of an upgrade it asked for: a classic HTTP/1.1 `Upgrade`, or an HTTP/2
/// extended CONNECT (RFC 8441), which is answered 200 where HTTP/1.1 says 101.
pub struct ClientUpgrade {
    on: OnUpgrade,
    extended_connect: bool,
}

/// Makes a client's request ready to pass on as HTTP/1.1: its cookies in one header, the
/// headers of its connection out, the `X-Forwarded-*` headers in (`prefix` is the context path
/// taken off, if any; the scheme `https` when it came over TLS), its `Host` kept; an HTTP/2
/// extended CONNECT becomes the HTTP/1.1 upgrade it stands for. Returns the client's side of
/// the upgrade it asks for.
pub fn prepare(
    request: &mut Request<Body>,
    client: SocketAddr,
    prefix: &str,
    from_balancer: bool,
) -> Option<ClientUpgrade> {
    // Only a WebSocket: any other protocol would open a tunnel to the app that nothing in
    // between understands (h2c smuggling).
    let extended_connect = request.method() == Method::CONNECT
        && request
            .extensions()
            .get::<Protocol>()
            .is_some_and(|protocol| protocol.as_str().eq_ignore_ascii_case("websocket"));
    let upgrade = (extended_connect || is_upgrade(request.headers()))
        .then(|| request.extensions_mut().remove::<OnUpgrade>())
        .flatten()
        .map(|on| ClientUpgrade {
            on,
            extended_connect,
        });
    let host = request.headers().get(header::HOST).cloned().or_else(|| {
        let authority = request.uri().authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    if request.version() == Version::HTTP_2 {
        join_cookies(request.headers_mut());
    }
    if extended_connect {
        as_classic_upgrade(request);
    }
    let scheme = match request.extensions().get::<OverTls>() {
        Some(_) => "https",
        None => "http",
    };
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    remove_hop_by_hop(headers, upgrade.is_some());
    set_forwarded(headers, client.ip(), host, prefix, scheme, from_balancer);
    upgrade
}

/// An extended CONNECT for a WebSocket as HTTP/1.1 asks for the same: a GET with `Upgrade`,
/// and the key its handshake needs (HTTP/2 has none).
fn as_classic_upgrade(request: &mut Request<Body>) {
    request.extensions_mut().remove::<Protocol>();
    *request.method_mut() = Method::GET;
    let headers = request.headers_mut();
    if let Some(key) = websocket_key() {
        headers.insert("sec-websocket-key", key);
    }
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// A WebSocket handshake's key: 16 random bytes in base64 (RFC 6455, 4.1); none if the
/// system gives no random bytes (the app then refuses the handshake).
fn websocket_key() -> Option<HeaderValue> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut nonce = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut nonce).ok()?;
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key).ok()
}

/// Passes a response back to the client: an upgrade becomes a tunnel between the client and
/// the server that answered; otherwise the body streams through. `guard` lives as long as the
/// exchange (the response's body, or the tunnel).
pub fn respond<G: Send + 'static>(
    mut response: Response<hyper::body::Incoming>,
    upgrade: Option<ClientUpgrade>,
    guard: G,
) -> Response<Body> {
    let extended_connect = upgrade
        .as_ref()
        .is_some_and(|upgrade| upgrade.extended_connect);
    if extended_connect && response.status().is_success() {
        // Over HTTP/2 a 2xx would open a tunnel the app never did.
        return page(
            StatusCode::BAD_GATEWAY,
            "No WebSocket",
            "The app answered a WebSocket handshake without switching protocols.",
        );
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = upgrade else {
            return response.map(|_| Body::empty());
        };
        let server_side = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(client_side.on, server_side, guard));
        if client_side.extended_connect {
            // HTTP/2 says yes to an extended CONNECT with 200, and has no connection headers.
            *response.status_mut() = StatusCode::OK;
            remove_hop_by_hop(response.headers_mut(), false);
            response.headers_mut().remove("sec-websocket-accept");
        }
        return response.map(|_| Body::empty());
    }
    remove_hop_by_hop(response.headers_mut(), false);
    // The body owns the guard, which is dropped with it: when it has gone out, or the client
    // left.
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _guard = &guard;
            frame
        }))
    })
}

/// Carries bytes both ways between an upgraded client connection and the server's, until
/// either closes.
async fn tunnel<G>(client_side: OnUpgrade, server_side: OnUpgrade, _guard: G) {
    let (Ok(client_side), Ok(server_side)) = (client_side.await, server_side.await) else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(
        &mut TokioIo::new(client_side),
        &mut TokioIo::new(server_side),
    )
    .await;
}

/// HTTP/2 may split `Cookie` into one header per cookie; HTTP/1.1 wants them in one
/// (RFC 9113, 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let cookies: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    if cookies.len() < 2 {
        return;
    }
    if let Ok(joined) = HeaderValue::from_str(&cookies.join("; ")) {
        headers.insert(header::COOKIE, joined);
    }
}

/// A 308 to the same host and path over HTTPS, on `port`: what a plain HTTP port answers when
/// it only redirects.
pub fn redirect_to_https(request: &Request<Body>, port: u16) -> Response<Body> {
    let host = request_host(request);
    if !is_host_name(&host) {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "This port only sends clients to HTTPS, and the request names no host (a DNS name or an address) to send it to.",
        );
    }
    let port = match port {
        443 => String::new(),
        port => format!(":{port}"),
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    let location = format!("https://{host}{port}{path}");
    let Ok(value) = HeaderValue::from_str(&location) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The request's host cannot be made an HTTPS address.",
        );
    };
    let mut response = page(
        StatusCode::PERMANENT_REDIRECT,
        "Moved to HTTPS",
        &format!("This is served at {location}."),
    );
    response.headers_mut().insert(header::LOCATION, value);
    response
}

/// Whether `host` is a DNS name or an address (IPv6 in brackets), and nothing more: what goes
/// into a `Location` can then not point anywhere else (`evil.example/`, `a@evil.example`).
fn is_host_name(host: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    match host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        Some(address) => address.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && host.len() <= 253 && host.chars().all(allowed),
    }
}

/// A small HTML page with a title and one paragraph.
pub fn page(status: StatusCode, title: &str, text: &str) -> Response<Body> {
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{status} {title}</title></head>\n<body><h1>{title}</h1>\n<p>{}</p></body></html>\n",
        escape(text),
        title = escape(title)
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Body::from(html))
        .unwrap_or_default()
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        remove_hop_by_hop(&mut headers, false);
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get(header::UPGRADE).is_none());
        assert_eq!(headers.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&headers));
        remove_hop_by_hop(&mut headers, true);
        assert_eq!(headers.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(headers.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn http2_cookie_headers_are_joined_into_one() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("JSESSIONID=x.one"));
        join_cookies(&mut headers);
        assert_eq!(headers.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(headers[header::COOKIE], "a=1; JSESSIONID=x.one");
    }

    #[test]
    fn a_redirect_to_https_goes_to_the_same_host_and_path_and_nowhere_else() {
        let redirect = |host: &str, port| {
            let request = Request::get("/app/x?q=1")
                .header(header::HOST, host)
                .body(Body::empty())
                .unwrap();
            redirect_to_https(&request, port)
        };
        let location = |response: Response<Body>| response.headers()[header::LOCATION].clone();
        assert_eq!(
            location(redirect("Shop.Example:8080", 8443)),
            "https://shop.example:8443/app/x?q=1"
        );
        assert_eq!(
            location(redirect("shop.example", 443)),
            "https://shop.example/app/x?q=1"
        );
        assert_eq!(
            location(redirect("[::1]:8080", 8443)),
            "https://[::1]:8443/app/x?q=1"
        );
        for odd in [
            "evil.example/",
            "a@evil.example",
            "evil.example\\.shop",
            "",
            "[::1",
        ] {
            assert_eq!(
                redirect(odd, 8443).status(),
                StatusCode::BAD_REQUEST,
                "{odd}"
            );
        }
    }

    #[test]
    fn an_http2_websocket_becomes_an_http1_upgrade_and_h2c_never_does() {
        let mut request = Request::connect("/ws").body(Body::empty()).unwrap();
        request
            .extensions_mut()
            .insert(Protocol::from_static("websocket"));
        as_classic_upgrade(&mut request);
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.headers()[header::UPGRADE], "websocket");
        assert_eq!(request.headers()[header::CONNECTION], "upgrade");
        assert_eq!(request.headers()["sec-websocket-key"].len(), 24);
        assert!(is_upgrade(request.headers()));

        let client: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut smuggled = Request::get("/")
            .header(header::UPGRADE, "h2c")
            .header(header::CONNECTION, "Upgrade, HTTP2-Settings")
            .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
            .body(Body::empty())
            .unwrap();
        prepare(&mut smuggled, client, "/", false);
        assert!(smuggled.headers().get(header::UPGRADE).is_none());
        assert!(smuggled.headers().get("http2-settings").is_none());
    }

    #[test]
    fn pages_escape_what_they_show() {
        assert_eq!(escape("<script>&\""), "&lt;script&gt;&amp;&quot;");
    }
}
