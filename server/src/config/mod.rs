//! A node's configuration: its properties, and the config file (`standalone.toml` or
//! `standalone-ha.toml` in the install's `config/`) they are resolved into.

mod placeholders;
pub mod properties;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use placeholders::Resolver;
pub use properties::{KNOWN_PROPERTIES, Properties};

/// This server's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What can be wrong with a node's properties or config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value '{value}' for property {name}: expected {expected}")]
    InvalidProperty {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "{file} asks for ${{{name}}}, which is not set: pass -D{name}=VALUE or give a default as ${{{name}:VALUE}}"
    )]
    UnresolvedProperty { file: String, name: String },
    #[error("{file}: '{text}' opens a placeholder with ${{ but never closes it with }}")]
    UnterminatedPlaceholder { file: String, text: String },
    #[error(
        "there is no config {name} in {dir}; the configs there are: {available} (pick one with --server-config=NAME)"
    )]
    ConfigNotFound {
        name: String,
        dir: PathBuf,
        available: String,
    },
    #[error(
        "both -Dimmutant.cluster.secret and -Dimmutant.cluster.secret-file are given; give one (the file keeps the secret out of the process list)"
    )]
    TwoSecrets,
    #[error(
        "a clustered node needs its cluster's secret, and {file} gives none: pass -Dimmutant.cluster.secret=SECRET or -Dimmutant.cluster.secret-file=PATH, the same on every node (cargo immutant install writes a random one into the install's standalone-ha.toml)"
    )]
    NoClusterSecret { file: String },
    #[error(
        "cannot read the cluster secret from {path}: {source}; give -Dimmutant.cluster.secret-file a readable file holding the secret"
    )]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid {key} '{value}' in {file}: expected {expected}")]
    InvalidValue {
        file: String,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "jboss.socket.binding.port-offset={offset} pushes the {port_name} port {port} past 65535; use an offset of at most {max}"
    )]
    PortOutOfRange {
        port_name: &'static str,
        port: u16,
        offset: u16,
        max: u16,
    },
}

/// The config a node runs with, every placeholder resolved and every value checked.
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// The config file's name, such as `standalone.toml`.
    pub name: String,
    pub path: PathBuf,
    pub node_name: String,
    pub data_dir: PathBuf,
    /// What the HTTP and cluster ports bind.
    pub bind_address: IpAddr,
    /// What the management port binds.
    pub management_bind_address: IpAddr,
    pub port_offset: u16,
    /// The HTTP port, offset applied.
    pub http_port: u16,
    /// The management port, offset applied.
    pub management_port: u16,
    #[serde(serialize_with = "serialize_level")]
    pub log_level: tracing::Level,
    pub deployments: PathBuf,
    /// The server groups this node belongs to: it runs the apps deployed to none, or to one of
    /// these.
    pub groups: Vec<String>,
    /// Present in `standalone-ha.toml`: the node is meant to join a cluster.
    pub cluster: Option<ClusterConfig>,
}

/// How a clustered node finds its peers, as `[cluster]` of the config says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ClusterSection {
    name: String,
    port: u16,
    multicast_address: IpAddr,
    multicast_port: u16,
    seeds: String,
    singleton_quorum: u32,
    /// The secret the cluster's members share.
    #[serde(default)]
    secret: Secret,
    /// A file holding it, instead.
    #[serde(default)]
    secret_file: String,
}

/// A secret the config holds: never shown (its debug form is a mask, and it is left out of
/// every serialized form).
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for deriving keys from.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(secret)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("(secret)")
    }
}

/// How a clustered node finds its peers.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    /// Only nodes with the same cluster name join each other.
    pub name: String,
    /// The cluster port (gossip over UDP, peer links over TCP), offset applied.
    pub port: u16,
    pub multicast_address: IpAddr,
    pub multicast_port: u16,
    /// Other nodes' cluster addresses, where multicast is not wanted.
    pub seeds: Vec<String>,
    /// The members a side of the cluster must see for its singletons to run.
    pub singleton_quorum: u32,
    /// What every gossip datagram and link is sealed with (see `cluster::seal`).
    #[serde(skip)]
    pub secret: Secret,
}

impl ServerConfig {
    /// The socket the HTTP port binds.
    pub fn http_address(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.http_port)
    }

    /// The socket the management port binds.
    pub fn management_address(&self) -> SocketAddr {
        SocketAddr::new(self.management_bind_address, self.management_port)
    }

    /// Whether the management API speaks TLS: bound beyond loopback, it does (its token must
    /// not cross the network in the clear); on loopback, plain HTTP.
    pub fn management_tls(&self) -> bool {
        !self.management_bind_address.is_loopback()
    }

    /// The management API's address as a URL (`http://` on loopback, `https://` beyond).
    pub fn management_url(&self) -> String {
        let scheme = match self.management_tls() {
            true => "https",
            false => "http",
        };
        format!("{scheme}://{}", self.management_address())
    }

    /// Loads the config named `name` (a file in `<home>/config`, with or without `.toml`, or a
    /// path) and resolves it against `properties`. Also returns the property names it refers to.
    pub fn load(
        name: &str,
        properties: &Properties,
    ) -> Result<(ServerConfig, Vec<String>), ConfigError> {
        if properties.was_given("immutant.cluster.secret")
            && properties.was_given("immutant.cluster.secret-file")
        {
            return Err(ConfigError::TwoSecrets);
        }
        let home = properties.home();
        let path = config_path(&home, name)?;
        let file = path
            .file_name()
            .map_or_else(|| name.to_string(), |f| f.to_string_lossy().into_owned());
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut document: toml::Value =
            toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.clone(),
                source,
            })?;
        let mut resolver = Resolver::new(properties, &file);
        resolver.resolve_document(&mut document)?;
        let referenced = resolver.referenced.into_iter().collect();
        let parsed = ConfigFile::deserialize(document).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        let config = parsed.into_config(file, path, &home)?;
        Ok((config, referenced))
    }
}

/// Where the config named `name` is: a path if it looks like one, else a file in `<home>/config`.
fn config_path(home: &Path, name: &str) -> Result<PathBuf, ConfigError> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let dir = home.join("config");
    let candidates = [dir.join(name), dir.join(format!("{name}.toml"))];
    if let Some(found) = candidates.into_iter().find(|path| path.is_file()) {
        return Ok(found);
    }
    let mut available: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|file| file.ends_with(".toml"))
        .collect();
    available.sort();
    Err(ConfigError::ConfigNotFound {
        name: name.to_string(),
        dir,
        available: if available.is_empty() {
            "none".to_string()
        } else {
            available.join(", ")
        },
    })
}

/// The config file as written, after placeholders are resolved.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ConfigFile {
    node: NodeSection,
    interfaces: InterfacesSection,
    socket_binding_group: SocketBindingSection,
    logging: LoggingSection,
    deployment_scanner: ScannerSection,
    cluster: Option<ClusterSection>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct NodeSection {
    name: String,
    data_dir: PathBuf,
    /// Comma-separated; missing in configs written before groups.
    #[serde(default)]
    groups: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct InterfacesSection {
    bind_address: IpAddr,
    /// Where the management port listens: loopback unless the config says otherwise.
    #[serde(default = "loopback")]
    management_address: IpAddr,
}

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct SocketBindingSection {
    port_offset: u16,
    http: u16,
    management_http: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct LoggingSection {
    level: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ScannerSection {
    path: PathBuf,
}

impl ConfigFile {
    fn into_config(
        self,
        file: String,
        path: PathBuf,
        home: &Path,
    ) -> Result<ServerConfig, ConfigError> {
        let bindings = &self.socket_binding_group;
        let offset = bindings.port_offset;
        let ports = [
            ("HTTP", bindings.http),
            ("management", bindings.management_http),
        ];
        let (port_name, highest) = ports
            .into_iter()
            .max_by_key(|(_, port)| *port)
            .unwrap_or(("HTTP", 0));
        if highest.checked_add(offset).is_none() {
            return Err(ConfigError::PortOutOfRange {
                port_name,
                port: highest,
                offset,
                max: u16::MAX - highest,
            });
        }
        let (http_port, management_port) =
            (bindings.http + offset, bindings.management_http + offset);
        let log_level = properties::parse_log_level(&self.logging.level).ok_or_else(|| {
            ConfigError::InvalidValue {
                file: file.clone(),
                key: "logging.level",
                value: self.logging.level.clone(),
                expected: "one of TRACE, DEBUG, INFO, WARN, ERROR",
            }
        })?;
        let cluster = match self.cluster {
            Some(cluster) => Some(cluster.into_config(&file, offset)?),
            None => None,
        };
        if !immutant_protocol::names::is_node_name(&self.node.name) {
            return Err(ConfigError::InvalidValue {
                file,
                key: "node.name",
                value: self.node.name,
                expected: "a plain name (ASCII letters, digits, -, _ and . but not first, at most 64): set one with -Djboss.node.name=NAME",
            });
        }
        let groups: Vec<String> = self
            .node
            .groups
            .split(',')
            .map(str::trim)
            .filter(|group| !group.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(bad) = groups
            .iter()
            .find(|group| !immutant_protocol::names::is_deployment_name(group))
        {
            return Err(ConfigError::InvalidValue {
                file,
                key: "node.groups",
                value: bad.clone(),
                expected: "group names of ASCII letters, digits, - and _, separated by commas: -Dimmutant.node.groups=web,workers",
            });
        }
        Ok(ServerConfig {
            name: file,
            path,
            node_name: self.node.name,
            data_dir: absolute(&self.node.data_dir),
            bind_address: self.interfaces.bind_address,
            management_bind_address: self.interfaces.management_address,
            port_offset: offset,
            http_port,
            management_port,
            log_level,
            deployments: home.join(self.deployment_scanner.path),
            groups,
            cluster,
        })
    }
}

impl ClusterSection {
    fn into_config(self, file: &str, offset: u16) -> Result<ClusterConfig, ConfigError> {
        let invalid = |key, value: String, expected| ConfigError::InvalidValue {
            file: file.to_string(),
            key,
            value,
            expected,
        };
        if !self.multicast_address.is_multicast() {
            let value = self.multicast_address.to_string();
            return Err(invalid(
                "cluster.multicast-address",
                value,
                "a multicast address such as 230.0.0.4",
            ));
        }
        let seeds = properties::parse_seeds(&self.seeds).ok_or_else(|| {
            invalid(
                "cluster.seeds",
                self.seeds.clone(),
                "host:port addresses separated by commas",
            )
        })?;
        // A secret file, when one is given, wins over the secret the config has (the one
        // `install` wrote, say).
        let secret = match (self.secret_file.as_str(), self.secret.0.is_empty()) {
            ("", false) => self.secret,
            ("", true) => {
                return Err(ConfigError::NoClusterSecret {
                    file: file.to_string(),
                });
            }
            (path, _) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                        path: PathBuf::from(path),
                        source,
                    })?;
                match text.trim() {
                    "" => {
                        return Err(ConfigError::SecretFile {
                            path: PathBuf::from(path),
                            source: std::io::Error::other("it is empty"),
                        });
                    }
                    secret => Secret(secret.to_string()),
                }
            }
        };
        let port = self
            .port
            .checked_add(offset)
            .ok_or(ConfigError::PortOutOfRange {
                port_name: "cluster",
                port: self.port,
                offset,
                max: u16::MAX - self.port,
            })?;
        Ok(ClusterConfig {
            secret,
            name: self.name,
            port,
            multicast_address: self.multicast_address,
            multicast_port: self.multicast_port,
            seeds,
            singleton_quorum: self.singleton_quorum.max(1),
        })
    }
}

/// A path made absolute against the working directory, so that logs and the management API
/// show where things really are.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn serialize_level<S: serde::Serializer>(
    level: &tracing::Level,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(level.as_str())
}

#[cfg(test)]
mod tests;
