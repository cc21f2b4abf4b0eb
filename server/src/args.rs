//! The node's command line, as JBoss's `standalone.sh` took it: `-Dname=value`,
//! `--server-config=NAME`, `-b ADDRESS`.

use std::net::IpAddr;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::KNOWN_PROPERTIES;
use crate::config::properties::PropertyDefault;

/// The arguments of `immutant-server`.
#[derive(Debug, Parser)]
#[command(
    name = "immutant-server",
    version,
    about = "An Immutant node: runs the apps deployed to its install, alone or in a cluster."
)]
pub struct ServerArgs {
    /// Sets a property (repeatable); the properties the node honours are listed below.
    #[arg(short = 'D', value_name = "NAME=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,

    /// The config to run with: a file in the install's config/ (standalone.toml, or
    /// standalone-ha.toml to join a cluster), with or without .toml, or a path.
    #[arg(
        short = 'c',
        long = "server-config",
        value_name = "NAME",
        default_value = "standalone.toml"
    )]
    pub server_config: String,

    /// The address every port binds; the same as -Djboss.bind.address=ADDRESS.
    #[arg(short = 'b', value_name = "ADDRESS")]
    pub bind_address: Option<String>,

    /// Run as something other than a node.
    #[command(subcommand)]
    pub role: Option<Role>,
}

/// What else the binary can be.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// Runs a balancer in front of clustered nodes (what httpd with mod_cluster was): it
    /// advertises itself, learns nodes and their contexts by MCMP, and proxies requests to them.
    Balancer(BalancerArgs),
}

/// The arguments of `immutant-server balancer`.
#[derive(Debug, Args)]
pub struct BalancerArgs {
    /// The port clients send their requests to.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    /// The port nodes send MCMP to (mod_cluster's management protocol).
    #[arg(long, default_value_t = 6666)]
    pub mcmp_port: u16,

    /// The address both ports bind.
    #[arg(short = 'b', long = "bind", default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// Who may send MCMP: addresses or networks (address/bits), comma-separated.
    #[arg(long, default_value = "127.0.0.0/8,::1", value_parser = immutant_balancer::parse_allow)]
    pub allow: std::vec::Vec<(IpAddr, u8)>,

    /// Do not advertise the balancer by multicast (nodes then need it in
    /// -Dimmutant.modcluster.proxies).
    #[arg(long)]
    pub no_advertise: bool,

    #[command(flatten)]
    pub https: immutant_contracts::https::HttpsFlags,

    /// TRACE, DEBUG, INFO, WARN or ERROR.
    #[arg(long, default_value = "INFO", value_parser = parse_level)]
    pub log_level: tracing::Level,
}

/// HTTPS as the balancer's flags give it, if they do: every certificate with its key.
pub fn balancer_tls(
    flags: &immutant_contracts::https::HttpsFlags,
) -> Result<Option<immutant_balancer::BalancerTls>, String> {
    let Some((port, pairs)) = flags.pairs()? else {
        return Ok(None);
    };
    let certificates = pairs
        .into_iter()
        .map(|(cert, key)| immutant_foundation::tls::CertificateFiles { cert, key })
        .collect();
    Ok(Some(immutant_balancer::BalancerTls {
        port,
        certificates,
        redirect_http: flags.redirect_http,
        hsts: flags.hsts,
    }))
}

impl ServerArgs {
    /// Parses the process's arguments; `--help` lists every property with its default.
    pub fn from_env() -> Self {
        let command = ServerArgs::command().after_help(properties_help());
        let matches = command.get_matches();
        ServerArgs::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    /// The properties given, `-b` applied last (it wins, as it did in JBoss).
    pub fn given_properties(&self) -> Vec<(String, String)> {
        let mut given = self.properties.clone();
        if let Some(address) = &self.bind_address {
            given.push(("jboss.bind.address".to_string(), address.clone()));
        }
        given
    }
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!(
            "'{text}' is not NAME=VALUE; set a property as -Dname=value"
        )),
    }
}

fn parse_level(text: &str) -> Result<tracing::Level, String> {
    crate::config::properties::parse_log_level(text)
        .ok_or_else(|| format!("'{text}' is not a log level: TRACE, DEBUG, INFO, WARN or ERROR"))
}

fn properties_help() -> String {
    let mut help = String::from("Properties (-Dname=value), with their defaults:\n");
    for property in KNOWN_PROPERTIES {
        let default = match property.default {
            PropertyDefault::Value(value) => value,
            PropertyDefault::HostName => "this host's name",
            PropertyDefault::Home => "the install this binary is in",
            PropertyDefault::HomeData => "<jboss.home.dir>/data",
            PropertyDefault::FromConfig => "the config's (cargo immutant install writes one)",
        };
        help.push_str(&format!(
            "  {} (default: {default})\n      {}\n",
            property.name, property.help
        ));
    }
    help.push_str("\nApps can read every property, including ones of their own.");
    help
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_bind_address_become_properties() {
        let args = ServerArgs::try_parse_from([
            "immutant-server",
            "-Djboss.node.name=one",
            "-Dgreeting=hello world",
            "-b",
            "127.0.0.2",
            "--server-config=standalone-ha.toml",
        ])
        .unwrap();
        assert_eq!(args.server_config, "standalone-ha.toml");
        assert_eq!(
            args.given_properties(),
            [
                ("jboss.node.name".to_string(), "one".to_string()),
                ("greeting".to_string(), "hello world".to_string()),
                ("jboss.bind.address".to_string(), "127.0.0.2".to_string()),
            ]
        );
    }

    #[test]
    fn a_property_without_a_value_is_refused() {
        let error =
            ServerArgs::try_parse_from(["immutant-server", "-Djboss.node.name"]).unwrap_err();
        assert!(error.to_string().contains("-Dname=value"), "{error}");
    }

    #[test]
    fn help_lists_every_property() {
        let help = properties_help();
        for property in KNOWN_PROPERTIES {
            assert!(help.contains(property.name));
        }
    }
}
