//! Node properties: the `-Dname=value` settings a node is started with, the ones it knows,
//! their defaults, and how each one's value is checked.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// What kind of value a known property takes; decides how a value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyKind {
    /// Any non-empty text.
    Text,
    /// A filesystem path.
    Path,
    /// An IP address the node can bind.
    Address,
    /// An IPv4 or IPv6 multicast group.
    MulticastAddress,
    /// A TCP port, 1-65535.
    Port,
    /// A shift applied to every port, 0-65535.
    PortOffset,
    /// A log level, by JBoss's names (TRACE, DEBUG, INFO, WARN, ERROR) or tracing's.
    LogLevel,
    /// A positive number of bytes.
    Bytes,
    /// A whole number above 0.
    Count,
    /// Comma-separated host:port addresses, or nothing.
    Seeds,
    /// `true` or `false`.
    Flag,
}

/// Where a known property's default comes from.
#[derive(Debug, Clone, Copy)]
pub enum PropertyDefault {
    /// A fixed value.
    Value(&'static str),
    /// This machine's host name.
    HostName,
    /// The install the server binary belongs to (the parent of its `bin/`).
    Home,
    /// `<jboss.home.dir>/data`.
    HomeData,
    /// None of the node's: the config's own default (`${name:default}`) applies, if it has one.
    FromConfig,
}

/// A property the node honours.
#[derive(Debug)]
pub struct KnownProperty {
    pub name: &'static str,
    pub kind: PropertyKind,
    pub default: PropertyDefault,
    pub help: &'static str,
}

/// Every property the node honours, in the order `--help` lists them.
pub const KNOWN_PROPERTIES: &[KnownProperty] = &[
    KnownProperty {
        name: "jboss.node.name",
        kind: PropertyKind::Text,
        default: PropertyDefault::HostName,
        help: "the node's name, unique in its cluster",
    },
    KnownProperty {
        name: "jboss.home.dir",
        kind: PropertyKind::Path,
        default: PropertyDefault::Home,
        help: "the install: its config/ and deployments/",
    },
    KnownProperty {
        name: "jboss.server.data.dir",
        kind: PropertyKind::Path,
        default: PropertyDefault::HomeData,
        help: "where the node persists everything; locked while it runs",
    },
    KnownProperty {
        name: "jboss.bind.address",
        kind: PropertyKind::Address,
        default: PropertyDefault::Value("127.0.0.1"),
        help: "the address the HTTP and cluster ports bind (also -b)",
    },
    KnownProperty {
        name: "jboss.bind.address.management",
        kind: PropertyKind::Address,
        default: PropertyDefault::Value("127.0.0.1"),
        help: "the address the management port binds; beyond loopback it speaks TLS only, and every request needs the node's management token",
    },
    KnownProperty {
        name: "immutant.management.tls.cert-file",
        kind: PropertyKind::Path,
        default: PropertyDefault::Value(""),
        help: "the management API's TLS certificate (PEM), when it binds beyond loopback; made in the data dir if not given",
    },
    KnownProperty {
        name: "immutant.management.tls.key-file",
        kind: PropertyKind::Path,
        default: PropertyDefault::Value(""),
        help: "the key of immutant.management.tls.cert-file (PEM)",
    },
    KnownProperty {
        name: "immutant.http.tls.cert",
        kind: PropertyKind::Path,
        default: PropertyDefault::Value(""),
        help: "a PEM certificate chain for the node's HTTPS port (comma-separated for one per virtual host, chosen by SNI; the first for the rest); HTTPS is off without it",
    },
    KnownProperty {
        name: "immutant.http.tls.key",
        kind: PropertyKind::Path,
        default: PropertyDefault::Value(""),
        help: "the PEM key of each immutant.http.tls.cert, in the same order (readable by the node's user alone)",
    },
    KnownProperty {
        name: "immutant.http.tls.port",
        kind: PropertyKind::Port,
        default: PropertyDefault::Value("8443"),
        help: "the HTTPS port, before the port offset",
    },
    KnownProperty {
        name: "immutant.http.tls.redirect-http",
        kind: PropertyKind::Flag,
        default: PropertyDefault::Value("false"),
        help: "the HTTP port answers clients (not balancers) with a redirect to HTTPS",
    },
    KnownProperty {
        name: "immutant.http.tls.hsts",
        kind: PropertyKind::Flag,
        default: PropertyDefault::Value("false"),
        help: "answers over HTTPS say Strict-Transport-Security (a year)",
    },
    KnownProperty {
        name: "immutant.http.h2c",
        kind: PropertyKind::Flag,
        default: PropertyDefault::Value("false"),
        help: "the HTTP port also speaks HTTP/2 without TLS (prior knowledge)",
    },
    KnownProperty {
        name: "immutant.http.handoff",
        kind: PropertyKind::Flag,
        default: PropertyDefault::Value("true"),
        help: "the HTTP port hands each client's connection to the app its first request is for, which serves it itself (false: the node passes every request on)",
    },
    KnownProperty {
        name: "jboss.socket.binding.port-offset",
        kind: PropertyKind::PortOffset,
        default: PropertyDefault::Value("0"),
        help: "added to every port, to run several nodes on one host",
    },
    KnownProperty {
        name: "jboss.http.port",
        kind: PropertyKind::Port,
        default: PropertyDefault::Value("8080"),
        help: "the HTTP port for web apps, before the offset",
    },
    KnownProperty {
        name: "jboss.management.http.port",
        kind: PropertyKind::Port,
        default: PropertyDefault::Value("9990"),
        help: "the management API's port, before the offset",
    },
    KnownProperty {
        name: "jboss.default.multicast.address",
        kind: PropertyKind::MulticastAddress,
        default: PropertyDefault::Value("230.0.0.4"),
        help: "the multicast group clustered nodes find each other on",
    },
    KnownProperty {
        name: "immutant.cluster.name",
        kind: PropertyKind::Text,
        default: PropertyDefault::Value("immutant"),
        help: "nodes form a cluster with the nodes of the same cluster name",
    },
    KnownProperty {
        name: "immutant.cluster.seeds",
        kind: PropertyKind::Seeds,
        default: PropertyDefault::Value(""),
        help: "host:port,... of other nodes' cluster ports, for networks without multicast",
    },
    KnownProperty {
        name: "immutant.cluster.secret",
        kind: PropertyKind::Text,
        default: PropertyDefault::FromConfig,
        help: "the secret every node of the cluster shares (never shown); nodes with another are ignored",
    },
    KnownProperty {
        name: "immutant.cluster.secret-file",
        kind: PropertyKind::Text,
        default: PropertyDefault::Value(""),
        help: "a file holding the cluster's secret, instead of immutant.cluster.secret",
    },
    KnownProperty {
        name: "immutant.node.groups",
        kind: PropertyKind::Text,
        default: PropertyDefault::Value(""),
        help: "the server groups this node belongs to, by name, separated by commas (an app deployed with --group G runs only on the nodes of G)",
    },
    KnownProperty {
        name: "immutant.singleton.quorum",
        kind: PropertyKind::Count,
        default: PropertyDefault::Value("1"),
        help: "singletons run only where at least this many members see each other",
    },
    KnownProperty {
        name: "immutant.engine",
        kind: PropertyKind::Text,
        default: PropertyDefault::Value("embedded"),
        help: "embedded, or nats://host:port[,host:port...] (tls://... for TLS) to keep a clustered node's messages, leases and membership in NATS JetStream",
    },
    KnownProperty {
        name: "immutant.engine.credentials",
        kind: PropertyKind::Text,
        default: PropertyDefault::Value(""),
        help: "a file with what NATS asks of this node: a .creds file, an nkey seed, or a token",
    },
    KnownProperty {
        name: "immutant.engine.ca-file",
        kind: PropertyKind::Text,
        default: PropertyDefault::Value(""),
        help: "a PEM file of the CA that signed the NATS servers' certificates, for tls:// beside the system's roots",
    },
    KnownProperty {
        name: "immutant.engine.replicas",
        kind: PropertyKind::Count,
        default: PropertyDefault::Value("1"),
        help: "how many NATS servers hold each stream and bucket (3 for a three-server NATS cluster)",
    },
    KnownProperty {
        name: "immutant.engine.lease-ms",
        kind: PropertyKind::Count,
        default: PropertyDefault::Value("1500"),
        help: "how long a singleton lease in NATS lasts unrenewed (1000 or more): the failover time, and how long a NATS leader election the singletons ride out; the cluster's first node sets it",
    },
    KnownProperty {
        name: "immutant.messaging.max-message-size",
        kind: PropertyKind::Bytes,
        default: PropertyDefault::Value("16777216"),
        help: "the largest message payload, in bytes (16 MiB)",
    },
    KnownProperty {
        name: "immutant.messaging.quick-repair",
        kind: PropertyKind::Flag,
        default: PropertyDefault::Value("true"),
        help: "whether each checkpoint of the journal's database also saves what makes reopening it after a crash quick (checkpoints are off the publish path)",
    },
    KnownProperty {
        name: "immutant.jobs.misfire-threshold",
        kind: PropertyKind::Count,
        default: PropertyDefault::Value("60000"),
        help: "milliseconds a job's firing may run late; later than that it runs once, now",
    },
    KnownProperty {
        name: "immutant.attach",
        kind: PropertyKind::Text,
        default: PropertyDefault::Value(""),
        help: "serve processes that connect to <data dir>/attach.sock as apps of this name (the tests `cargo immutant test` runs)",
    },
    KnownProperty {
        name: "immutant.modcluster.proxies",
        kind: PropertyKind::Seeds,
        default: PropertyDefault::Value(""),
        help: "host:port,... of balancers' MCMP ports, besides those heard advertising",
    },
    KnownProperty {
        name: "immutant.modcluster.balancer",
        kind: PropertyKind::Text,
        default: PropertyDefault::Value("mycluster"),
        help: "the balancer (in mod_cluster's sense) this node's contexts join",
    },
    KnownProperty {
        name: "immutant.modcluster.status-interval",
        kind: PropertyKind::Count,
        default: PropertyDefault::Value("10000"),
        help: "milliseconds between the load reports (STATUS) a node sends each balancer",
    },
    KnownProperty {
        name: "jboss.logging.level",
        kind: PropertyKind::LogLevel,
        default: PropertyDefault::Value("INFO"),
        help: "TRACE, DEBUG, INFO, WARN or ERROR",
    },
];

/// A URL list (`nats://user:password@host:port,...`) with each user and password masked.
pub fn without_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let shown = match rest.rsplit_once('@') {
                Some((_, host)) => format!("{}@{host}", immutant_protocol::secrets::MASK),
                None => rest.to_string(),
            };
            match scheme {
                "" => shown,
                scheme => format!("{scheme}://{shown}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Looks a known property up by name.
pub fn known(name: &str) -> Option<&'static KnownProperty> {
    KNOWN_PROPERTIES.iter().find(|p| p.name == name)
}

/// The known property whose name is nearest to `name`, if any is near enough to be a typo.
pub fn nearest_known(name: &str) -> Option<&'static str> {
    KNOWN_PROPERTIES
        .iter()
        .map(|p| (p.name, strsim::jaro_winkler(name, p.name)))
        .filter(|(_, score)| *score > 0.85)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(known, _)| known)
}

/// The properties of one node: those given on its command line, over the known defaults.
#[derive(Debug, Clone)]
pub struct Properties {
    given: BTreeMap<String, String>,
    home: PathBuf,
    host_name: String,
}

impl Properties {
    /// Checks the given properties and puts them over the defaults. `home` is the install the
    /// server binary belongs to, used unless `jboss.home.dir` is given.
    pub fn new(
        given: impl IntoIterator<Item = (String, String)>,
        home: PathBuf,
    ) -> Result<Self, ConfigError> {
        let given: BTreeMap<String, String> = given.into_iter().collect();
        for (name, value) in &given {
            if let Some(property) = known(name) {
                check_value(property, value)?;
            }
        }
        Ok(Properties {
            given,
            home,
            host_name: gethostname::gethostname().to_string_lossy().into_owned(),
        })
    }

    /// The value of a property: given, else its default; `None` for an unknown property not given.
    /// Whether `name` was given on the command line.
    pub fn was_given(&self, name: &str) -> bool {
        self.given.contains_key(name)
    }

    /// Whether the flag property `name` is `true` (given, or by default).
    pub fn flag(&self, name: &str) -> bool {
        self.get(name).as_deref() == Some("true")
    }

    pub fn get(&self, name: &str) -> Option<String> {
        if let Some(value) = self.given.get(name) {
            return Some(value.clone());
        }
        known(name).and_then(|property| self.default_of(property))
    }

    /// The install this node runs from.
    pub fn home(&self) -> PathBuf {
        PathBuf::from(
            self.get("jboss.home.dir")
                .expect("jboss.home.dir is a known property"),
        )
    }

    /// Every property: each known one with its value, and each one given on the command line.
    pub fn all(&self) -> BTreeMap<String, String> {
        let mut all: BTreeMap<String, String> = KNOWN_PROPERTIES
            .iter()
            .filter_map(|p| Some((p.name.to_string(), self.default_of(p)?)))
            .collect();
        all.extend(self.given.clone());
        all
    }

    /// Every property an app is given: all but the cluster's secret and the engine's address
    /// and credentials, which are the node's alone.
    pub fn for_apps(&self) -> BTreeMap<String, String> {
        let mut all = self.all();
        all.retain(|name, _| {
            !name.starts_with("immutant.cluster.secret") && !name.starts_with("immutant.engine")
        });
        all
    }

    /// Every property as the management API shows it: secrets' values masked.
    pub fn shown(&self) -> BTreeMap<String, String> {
        let mut all = self.all();
        for (name, value) in all.iter_mut() {
            if immutant_protocol::secrets::is_secret(name) {
                *value = immutant_protocol::secrets::MASK.to_string();
            } else if name == "immutant.engine" {
                *value = without_credentials(value);
            }
        }
        all
    }

    /// The names given on the command line that the node does not know, if they look like they
    /// were meant for it (`jboss.*` and `immutant.*`).
    pub fn unknown_given(&self) -> impl Iterator<Item = &str> {
        self.given.keys().map(String::as_str).filter(|name| {
            (name.starts_with("jboss.") || name.starts_with("immutant.")) && known(name).is_none()
        })
    }

    fn default_of(&self, property: &KnownProperty) -> Option<String> {
        Some(match property.default {
            PropertyDefault::Value(value) => value.to_string(),
            PropertyDefault::HostName => self.host_name.clone(),
            PropertyDefault::Home => self.home.display().to_string(),
            PropertyDefault::HomeData => data_dir_under(&self.home()).display().to_string(),
            PropertyDefault::FromConfig => return None,
        })
    }
}

fn data_dir_under(home: &Path) -> PathBuf {
    home.join("data")
}

/// Checks one value of a known property, with an error that names both.
fn check_value(property: &KnownProperty, value: &str) -> Result<(), ConfigError> {
    let expected = match property.kind {
        PropertyKind::Text | PropertyKind::Path if value.trim().is_empty() => {
            Some("a non-empty value")
        }
        PropertyKind::Text | PropertyKind::Path => None,
        PropertyKind::Address => value
            .parse::<IpAddr>()
            .err()
            .map(|_| "an IP address such as 127.0.0.1"),
        PropertyKind::MulticastAddress => match value.parse::<IpAddr>() {
            Ok(address) if address.is_multicast() => None,
            _ => Some("a multicast address such as 230.0.0.4"),
        },
        PropertyKind::Port => match value.parse::<u16>() {
            Ok(port) if port > 0 => None,
            _ => Some("a port number from 1 to 65535"),
        },
        PropertyKind::PortOffset => value
            .parse::<u16>()
            .err()
            .map(|_| "a whole number from 0 to 65535"),
        PropertyKind::Count => match value.parse::<u32>() {
            Ok(count) if count > 0 => None,
            _ => Some("a whole number above 0"),
        },
        PropertyKind::Flag => (value != "true" && value != "false").then_some("true or false"),
        PropertyKind::Seeds => parse_seeds(value).is_none().then_some(
            "host:port addresses separated by commas, such as 127.0.0.1:7600,127.0.0.1:7700",
        ),
        PropertyKind::Bytes => match value.parse::<u64>() {
            Ok(bytes) if bytes > 0 => None,
            _ => Some("a number of bytes, above 0"),
        },
        PropertyKind::LogLevel => parse_log_level(value)
            .is_none()
            .then_some("one of TRACE, DEBUG, INFO, WARN, ERROR"),
    };
    match expected {
        None => Ok(()),
        Some(expected) => Err(ConfigError::InvalidProperty {
            name: property.name.to_string(),
            value: value.to_string(),
            expected,
        }),
    }
}

/// Reads a seed list: `host:port` addresses separated by commas (empty: none).
pub fn parse_seeds(value: &str) -> Option<Vec<String>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|seed| !seed.is_empty())
        .map(|seed| match seed.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Some(seed.to_string())
            }
            _ => None,
        })
        .collect()
}

/// Reads a log level by JBoss's names as well as tracing's, in any case.
pub fn parse_log_level(value: &str) -> Option<tracing::Level> {
    match value.to_ascii_uppercase().as_str() {
        "TRACE" | "ALL" | "FINEST" | "FINER" => Some(tracing::Level::TRACE),
        "DEBUG" | "FINE" | "CONFIG" => Some(tracing::Level::DEBUG),
        "INFO" => Some(tracing::Level::INFO),
        "WARN" | "WARNING" => Some(tracing::Level::WARN),
        "ERROR" | "SEVERE" | "FATAL" => Some(tracing::Level::ERROR),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(given: &[(&str, &str)]) -> Result<Properties, ConfigError> {
        Properties::new(
            given.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            PathBuf::from("/opt/immutant"),
        )
    }

    #[test]
    fn the_engines_credentials_are_neither_shown_nor_given_to_apps() {
        let url = "nats://alice:s3cret@10.0.0.1:4222,tls://t0ken@10.0.0.2:4222,10.0.0.3:4222";
        let p = props(&[
            ("immutant.engine", url),
            ("immutant.engine.credentials", "/etc/nats.creds"),
        ])
        .unwrap();
        let shown = p.shown();
        assert_eq!(
            shown["immutant.engine"],
            "nats://****@10.0.0.1:4222,tls://****@10.0.0.2:4222,10.0.0.3:4222"
                .replace("****", immutant_protocol::secrets::MASK)
        );
        assert!(
            p.for_apps()
                .keys()
                .all(|name| !name.starts_with("immutant.engine"))
        );
    }

    #[test]
    fn defaults_fill_in_what_is_not_given() {
        let p = props(&[("jboss.node.name", "one")]).unwrap();
        assert_eq!(p.get("jboss.node.name").unwrap(), "one");
        assert_eq!(p.get("jboss.socket.binding.port-offset").unwrap(), "0");
        assert_eq!(
            p.get("jboss.server.data.dir").unwrap(),
            "/opt/immutant/data"
        );
        assert_eq!(p.get("no.such.thing"), None);
    }

    #[test]
    fn data_dir_default_follows_a_given_home() {
        let p = props(&[("jboss.home.dir", "/srv/imm")]).unwrap();
        assert_eq!(p.get("jboss.server.data.dir").unwrap(), "/srv/imm/data");
    }

    #[test]
    fn bad_values_name_the_property_and_the_value() {
        for (name, value) in [
            ("jboss.socket.binding.port-offset", "abc"),
            ("jboss.socket.binding.port-offset", "-1"),
            ("jboss.bind.address", "not-an-address"),
            ("jboss.default.multicast.address", "10.0.0.1"),
            ("jboss.http.port", "0"),
            ("jboss.logging.level", "LOUD"),
            ("jboss.node.name", " "),
        ] {
            let message = props(&[(name, value)]).unwrap_err().to_string();
            assert!(
                message.contains(name) && message.contains(value),
                "{message}"
            );
        }
    }

    #[test]
    fn typos_find_the_nearest_known_name() {
        assert_eq!(nearest_known("jboss.nod.name"), Some("jboss.node.name"));
        assert_eq!(
            nearest_known("jboss.socket.binding.portoffset"),
            Some("jboss.socket.binding.port-offset")
        );
        assert_eq!(nearest_known("completely.different"), None);
    }

    #[test]
    fn unknown_given_only_reports_our_namespaces() {
        let p = props(&[
            ("jboss.nod.name", "x"),
            ("app.greeting", "hi"),
            ("immutant.foo", "1"),
        ])
        .unwrap();
        assert_eq!(
            p.unknown_given().collect::<Vec<_>>(),
            ["immutant.foo", "jboss.nod.name"]
        );
    }
}
