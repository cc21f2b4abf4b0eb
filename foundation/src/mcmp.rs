//! mod_cluster's vocabulary, shared by the node (which speaks MCMP to balancers) and the
//! balancer (which hears it): the state of a context, the alias every node's default host
//! answers to, and advertising, what httpd's `mod_advertise` did. The balancer multicasts a
//! datagram naming its MCMP address to mod_cluster's group (224.0.1.105:23364) every 10 s, and
//! nodes that hear it send it their MCMP. The datagram is `mod_advertise`'s: an HTTP-like
//! status line and headers, with a digest over the date, sequence and server id (salted with
//! the MD5 of a security key, or zeros without one, as `mod_advertise` does).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use md5::{Digest, Md5};

/// The alias JBoss nodes give the contexts of their default host: those of apps that name no
/// virtual host of their own.
pub const DEFAULT_HOST: &str = "default-host";

/// What balancers may send a context of a node, as an operator says (mod_cluster's enable,
/// disable and stop): the management API's type, defined once in the contracts.
pub use immutant_contracts::status::ContextState;

/// mod_cluster's advertise group and port.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 105);
pub const PORT: u16 = 23364;

/// How often the balancer advertises itself (`AdvertiseFrequency`'s default).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The datagram for the `sequence`th advertisement of the server `server` (a UUID) whose MCMP
/// address is `manager`, sent at `date` (RFC 822).
pub fn datagram(
    server: &str,
    manager: SocketAddr,
    sequence: u64,
    date: &str,
    host: &str,
) -> String {
    format!(
        "HTTP/1.0 200 OK\r\nDate: {date}\r\nSequence: {sequence}\r\nDigest: {}\r\nServer: {server}\r\nX-Manager-Address: {manager}\r\nX-Manager-Url: /{server}\r\nX-Manager-Protocol: http\r\nX-Manager-Host: {host}\r\n\r\n",
        digest(date, sequence, server)
    )
}

/// `MD5(salt ‖ date ‖ sequence ‖ server)` in lower-case hex; the salt is 16 zero bytes, as
/// without an `AdvertiseSecurityKey`.
pub fn digest(date: &str, sequence: u64, server: &str) -> String {
    let mut md5 = Md5::new();
    md5.update([0u8; 16]);
    md5.update(date.as_bytes());
    md5.update(sequence.to_string().as_bytes());
    md5.update(server.as_bytes());
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The MCMP address an advertisement names, if it is one: a `200` datagram whose digest is
/// right. Without a security key the digest only shows the datagram is well formed, not who
/// sent it.
pub fn parse(datagram: &str) -> Option<SocketAddr> {
    let mut lines = datagram.split("\r\n");
    let status = lines.next()?;
    if !status.starts_with("HTTP/1.") || status.split(' ').nth(1) != Some("200") {
        return None;
    }
    let (mut date, mut sequence, mut digest_given, mut server, mut manager) =
        (None, None, None, None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        match name {
            "Date" => date = Some(value),
            "Sequence" => sequence = value.parse::<u64>().ok(),
            "Digest" => digest_given = Some(value),
            "Server" => server = Some(value),
            "X-Manager-Address" => manager = Some(value),
            _ => {}
        }
    }
    if digest(date?, sequence?, server?) != digest_given? {
        return None;
    }
    let manager = manager?;
    manager.parse().ok().or_else(|| {
        // A host name rather than an address: only `localhost` is taken.
        let (host, port) = manager.rsplit_once(':')?;
        (host == "localhost").then_some(())?;
        Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port.parse().ok()?,
        ))
    })
}

/// A fresh server id, formatted as a UUID.
pub fn server_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = || {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        hasher.finish()
    };
    let hex = format!("{:016x}{:016x}", word(), word());
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advertisement_names_the_manager_and_its_digest_holds() {
        let manager: SocketAddr = "127.0.0.1:6666".parse().unwrap();
        let date = "Mon, 30 Nov 2026 04:00:00 GMT";
        let text = datagram("ab-cd", manager, 3, date, "balancer");
        assert!(text.starts_with(
            "HTTP/1.0 200 OK\r\nDate: Mon, 30 Nov 2026 04:00:00 GMT\r\nSequence: 3\r\n"
        ));
        assert_eq!(parse(&text), Some(manager));
        let forged = text.replace("Sequence: 3", "Sequence: 4");
        assert_eq!(parse(&forged), None, "a digest that does not hold");
        assert_eq!(parse("HTTP/1.0 410 Gone\r\n\r\n"), None);
    }

    #[test]
    fn server_ids_look_like_uuids_and_differ() {
        let (a, b) = (server_id(), server_id());
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
    }
}
