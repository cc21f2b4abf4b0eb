//! MCMP, mod_cluster's management protocol, as httpd's `mod_manager` receives it: HTTP
//! requests whose method is the command (CONFIG, ENABLE-APP, DISABLE-APP, STOP-APP,
//! REMOVE-APP, STATUS, PING, INFO, DUMP, VERSION) and whose body is form-encoded parameters
//! (names in any case). Answers are `mod_manager`'s own: `200` with the bodies it gives, or
//! `500` with the `Version`, `Type` and `Mess` headers saying what is wrong. A command that is
//! refused for what it says changes nothing (one refused because the table is full may have
//! done part of its work, as mod_manager's does).

mod parameters;
mod report;

use std::fmt::Write;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};

use super::table::{
    BalancerSettings, ContextState, DEFAULT_BALANCER, MAX_CONTEXTS, Node, NodeConfig, NodeSettings,
    Refused, Table,
};
use parameters::{Parameters, atoi, boolean, duration_us};

/// The protocol version `mod_manager` says it speaks.
pub const VERSION: &str = "0.2.1";

/// Every MCMP command.
pub const COMMANDS: [&str; 10] = [
    "CONFIG",
    "ENABLE-APP",
    "DISABLE-APP",
    "STOP-APP",
    "REMOVE-APP",
    "STATUS",
    "PING",
    "INFO",
    "DUMP",
    "VERSION",
];

/// The longest value of each field, as `mod_manager` limits them (one less than these).
const ROUTE_SIZE: usize = 64;
const BALANCER_SIZE: usize = 40;
const DOMAIN_SIZE: usize = 20;
const HOST_SIZE: usize = 64;
const PORT_SIZE: usize = 7;
const TYPE_SIZE: usize = 16;
const COOKIE_SIZE: usize = 30;
const ALIAS_SIZE: usize = 255;
const CONTEXT_SIZE: usize = 80;
/// The most body `mod_manager` reads by default.
pub const MAX_BODY: usize = 13_188;

/// A refusal, in `mod_manager`'s words.
#[derive(Debug, Clone, PartialEq)]
pub struct McmpError {
    /// `SYNTAX`, `MEM` or `GENERAL`.
    pub kind: &'static str,
    pub message: String,
}

fn syntax(message: impl Into<String>) -> McmpError {
    McmpError {
        kind: "SYNTAX",
        message: format!("SYNTAX: {}", message.into()),
    }
}

fn memory(message: String) -> McmpError {
    McmpError {
        kind: "MEM",
        message: format!("MEM: {message}"),
    }
}

fn unknown_node(route: &str) -> McmpError {
    memory(format!("Can't read node with \"{route}\" JVMRoute"))
}

/// What a command answers: a body of text (empty for some), or a refusal.
pub type Answer = Result<String, McmpError>;

/// What carrying out a command came to: an answer, or a node to reach first (STATUS and PING
/// answer whether the balancer can reach the node, as mod_manager does).
pub enum Execution {
    Answered(Answer),
    Check(Check),
}

/// A STATUS or PING that waits on whether `address` answers.
pub struct Check {
    /// The address looked at, `host:port`.
    pub address: String,
    /// The node, by its route and the id the balancer gave it (None: a PING by address).
    node: Option<(String, u64)>,
    /// STATUS's load factor (None: PING, or a STATUS without one).
    load: Option<i32>,
    command: &'static str,
}

impl Check {
    fn of(node: &Node, load: Option<i32>, command: &'static str) -> Check {
        Check {
            address: node.address(),
            node: Some((node.route.clone(), node.id)),
            load,
            command,
        }
    }

    /// The answer once it is known whether the node answered. One that did takes the
    /// STATUS's load factor; one that did not keeps its own unless the STATUS lowers it (its
    /// health checks decide whether it takes requests). A node removed, or configured anew,
    /// while it was looked at is answered as unknown, so that it tells everything again.
    pub fn finish(self, table: &mut Table, reached: bool, started_us: u128) -> Answer {
        let route = match &self.node {
            Some((route, id)) => {
                let node = table
                    .node(route)
                    .filter(|node| node.id == *id && node.address() == self.address)
                    .ok_or_else(|| unknown_node(route))?;
                if let Some(load) = self.load.filter(|load| reached || *load < node.load) {
                    table.status(route, load);
                }
                Some(route.as_str())
            }
            None => None,
        };
        Ok(answer_with_state(self.command, route, reached, started_us))
    }
}

/// `Type=STATUS-RSP&JVMRoute=...&State=OK&id=...`, as mod_manager words it.
fn answer_with_state(command: &str, route: Option<&str>, up: bool, started_us: u128) -> String {
    let route = route.map(|route| format!("&JVMRoute={route}"));
    let state = if up { "OK" } else { "NOTOK" };
    format!(
        "Type={command}-RSP{}&State={state}&id={started_us}\n",
        route.unwrap_or_default()
    )
}

/// How INFO, DUMP and VERSION are answered: plain text, or XML to a client whose `Accept`
/// names `text/xml` (every other command answers plain text either way).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Text,
    Xml,
}

impl Format {
    /// The format `command` is answered in, for a client that accepts `accept`.
    pub fn of(command: &str, accept: Option<&str>) -> Format {
        let listing = ["INFO", "DUMP", "VERSION"].contains(&command);
        match listing && accept.is_some_and(|accept| accept.contains("text/xml")) {
            true => Format::Xml,
            false => Format::Text,
        }
    }
}

/// Carries out `command` (its method, upper-case) on the table. `wildcard` is the `/*` form of
/// the app commands: every context of the node. `started_us` is when the balancer started,
/// the `id` of STATUS and PING answers.
pub fn execute(
    table: &mut Table,
    command: &str,
    wildcard: bool,
    body: &[u8],
    started_us: u128,
    format: Format,
) -> Execution {
    let parameters = match Parameters::parse(body) {
        Ok(parameters) => parameters,
        Err(refusal) => return Execution::Answered(Err(refusal)),
    };
    let answer = match command {
        "CONFIG" => config(table, &parameters),
        "ENABLE-APP" => app(table, &parameters, wildcard, Some(ContextState::Enabled)),
        "DISABLE-APP" => app(table, &parameters, wildcard, Some(ContextState::Disabled)),
        "STOP-APP" => app(table, &parameters, wildcard, Some(ContextState::Stopped)),
        "REMOVE-APP" => app(table, &parameters, wildcard, None),
        "STATUS" => return status(table, &parameters, started_us),
        "PING" => return ping(table, &parameters, started_us),
        "INFO" if format == Format::Xml => Ok(report::info_xml(table)),
        "INFO" => Ok(report::info(table)),
        "DUMP" if format == Format::Xml => Ok(report::dump_xml(table)),
        "DUMP" => Ok(report::dump(table)),
        "VERSION" if format == Format::Xml => Ok(format!(
            "<?xml version=\"1.0\" standalone=\"yes\" ?>\n<version><release>immutant-balancer/{}</release><protocol>{VERSION}</protocol></version>\n",
            crate::VERSION
        )),
        "VERSION" => Ok(format!(
            "release: immutant-balancer/{}, protocol: {VERSION}\n",
            crate::VERSION
        )),
        _ => Err(syntax("Command is not supported")),
    };
    Execution::Answered(answer)
}

/// A field's value, refused with `refusal` if it is `size` long or longer.
fn sized<'a>(value: &'a str, size: usize, refusal: &str) -> Result<&'a str, McmpError> {
    match value.len() < size {
        true => Ok(value),
        false => Err(syntax(refusal)),
    }
}

/// The aliases (lower case) and contexts a command names, every `Alias` and `Context` given.
fn aliases_and_contexts(parameters: &Parameters) -> Result<(Vec<String>, Vec<String>), McmpError> {
    let (mut aliases, mut contexts) = (Vec::new(), Vec::new());
    for (name, value) in &parameters.0 {
        let value = value.as_deref().unwrap_or_default();
        if name.eq_ignore_ascii_case("alias") {
            let value = value.to_ascii_lowercase();
            aliases.extend(parameters::list(&value, ALIAS_SIZE, "Alias")?);
        } else if name.eq_ignore_ascii_case("context") {
            contexts.extend(parameters::list(value, CONTEXT_SIZE, "Context")?);
        }
    }
    for list in [&mut aliases, &mut contexts] {
        let mut seen = std::collections::HashSet::new();
        list.retain(|item| seen.insert(item.clone()));
    }
    match (aliases.is_empty(), contexts.is_empty()) {
        (false, true) => Err(syntax("Alias without Context")),
        (true, false) => Err(syntax("Context without Alias")),
        _ => Ok((aliases, contexts)),
    }
}

/// Refused if a command names more pairs of alias and context than the table holds: the work
/// of one command stays bounded.
fn within_bounds(route: &str, aliases: &[String], contexts: &[String]) -> Result<(), McmpError> {
    match aliases.len() * contexts.len() <= MAX_CONTEXTS {
        true => Ok(()),
        false => Err(context_full(route)),
    }
}

fn config(table: &mut Table, parameters: &Parameters) -> Answer {
    if parameters
        .0
        .iter()
        .any(|(_, value)| value.as_deref().is_none_or(str::is_empty))
    {
        return Err(syntax(parameters::UNPARSABLE));
    }
    let mut balancer = BalancerSettings::new(DEFAULT_BALANCER);
    let mut settings = NodeSettings::default();
    let (mut route, mut domain, mut host, mut port, mut scheme) =
        ("", "", "localhost", "8009", "ajp".to_string());
    for (name, value) in &parameters.0 {
        let value = value.as_deref().unwrap_or_default();
        let bad = |field: &str| syntax(format!("{field} field has bad value"));
        match name.to_ascii_lowercase().as_str() {
            "balancer" => {
                balancer.name =
                    sized(value, BALANCER_SIZE, "Balancer field too big")?.to_ascii_lowercase();
            }
            "stickysession" => balancer.sticky = boolean(value).unwrap_or(balancer.sticky),
            "stickysessioncookie" => {
                balancer.cookie = sized(value, COOKIE_SIZE, "A field is too big")?.to_string();
            }
            "stickysessionpath" => {
                balancer.path_parameter =
                    sized(value, COOKIE_SIZE, "A field is too big")?.to_string();
            }
            "stickysessionremove" => balancer.remove = boolean(value).unwrap_or(balancer.remove),
            "stickysessionforce" => balancer.force = boolean(value).unwrap_or(balancer.force),
            "waitworker" => balancer.wait_worker = atoi(value),
            "maxattempts" => balancer.max_attempts = atoi(value),
            "jvmroute" => route = sized(value, ROUTE_SIZE, "JVMRoute field too big")?,
            "domain" => domain = sized(value, DOMAIN_SIZE, "LBGroup field too big")?,
            "host" => host = sized(value, HOST_SIZE, "Host field too big")?,
            "port" => port = sized(value, PORT_SIZE, "Port field too big")?,
            "type" => scheme = sized(value, TYPE_SIZE, "Type field too big")?.to_ascii_lowercase(),
            "reversed" => settings.reversed = boolean(value).unwrap_or(settings.reversed),
            "flushpackets" => {
                settings.flush_packets = match boolean(value) {
                    Some(on) => u8::from(on),
                    None if value.eq_ignore_ascii_case("auto") => 2,
                    None => settings.flush_packets,
                }
            }
            "flushwait" => {
                settings.flush_wait_us =
                    duration_us(value, "ms").ok_or_else(|| bad("Flushwait"))?;
            }
            "ping" => settings.ping_us = duration_us(value, "s").ok_or_else(|| bad("Ping"))?,
            "smax" => settings.smax = atoi(value),
            "ttl" => settings.ttl_us = duration_us(value, "s").ok_or_else(|| bad("TTL"))?,
            "timeout" => {
                settings.timeout_us = duration_us(value, "s").ok_or_else(|| bad("Timeout"))?;
            }
            _ => {}
        }
    }
    if route.is_empty() {
        return Err(syntax("JVMRoute can't be empty"));
    }
    let (aliases, contexts) = aliases_and_contexts(parameters)?;
    within_bounds(route, &aliases, &contexts)?;
    if scheme != "http" {
        return Err(McmpError {
            kind: "GENERAL",
            message: format!(
                "GENERAL: this balancer speaks http to its nodes, not {scheme}; configure the node's connector as http"
            ),
        });
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| syntax(format!("Port field has bad value: {port} is not a port")))?;
    // An IPv6 address may come with its zone (`[fe80::1%eth0]`), which goes.
    let host = match host.split_once('%') {
        Some((address, _)) if host.starts_with('[') => address,
        _ => host,
    };
    let configured = table.configure(NodeConfig {
        route: route.to_string(),
        domain: domain.to_string(),
        host: host.trim_matches(['[', ']']).to_string(),
        port,
        scheme,
        settings,
        balancer,
    });
    match configured {
        Err(Refused::RouteTaken) => {
            return Err(memory(format!(
                "Node with \"{route}\" JVMRoute already exists"
            )));
        }
        Err(Refused::Full) => {
            return Err(memory(format!(
                "Can't update or insert node with \"{route}\" JVMRoute"
            )));
        }
        Ok(()) => {}
    }
    for alias in &aliases {
        for context in &contexts {
            if !table.set_context(route, alias, context, ContextState::Stopped) {
                return Err(context_full(route));
            }
        }
    }
    Ok(String::new())
}

fn app(
    table: &mut Table,
    parameters: &Parameters,
    wildcard: bool,
    state: Option<ContextState>,
) -> Answer {
    let route = match parameters.get("jvmroute") {
        Some(route) => sized(route, ROUTE_SIZE, "JVMRoute field too big")?,
        None => "",
    };
    let (aliases, contexts) = aliases_and_contexts(parameters)?;
    if route.is_empty() {
        return Err(syntax("JVMRoute can't be empty"));
    }
    if !wildcard && aliases.is_empty() {
        return Err(syntax("No Context and Alias in APP command"));
    }
    within_bounds(route, &aliases, &contexts)?;
    if table.node(route).is_none() {
        return Err(unknown_node(route));
    }
    table.heard(route);
    if wildcard {
        match state {
            Some(state) => table.set_all_contexts(route, state),
            None => {
                table.remove_node(route);
            }
        }
        return Ok(String::new());
    }
    let name = match state {
        Some(ContextState::Enabled) => "ENABLE-APP",
        Some(ContextState::Disabled) => "DISABLE-APP",
        Some(ContextState::Stopped) => "STOP-APP",
        None => "REMOVE-APP",
    };
    let mut answer = format!("Type={name}-RSP\nJvmRoute={route}");
    // `Alias=*&Context=*`: every context of the node, which leaves (what some nodes send at
    // shutdown; mod_manager answers it the same way).
    if state.is_none() && aliases == ["*"] && contexts == ["*"] {
        table.remove_node(route);
        answer.push('\n');
        return Ok(answer);
    }
    for alias in &aliases {
        let mut done = Vec::new();
        for context in &contexts {
            let changed = match state {
                Some(state) => table.set_context(route, alias, context, state),
                None => table.remove_context(route, alias, context),
            };
            if changed {
                done.push(context.as_str());
            }
        }
        if !done.is_empty() {
            let _ = write!(answer, "\nAlias={alias} Contexts={}\n", done.join(","));
        }
    }
    answer.push('\n');
    Ok(answer)
}

fn context_full(route: &str) -> McmpError {
    memory(format!(
        "Can't update or insert context for node with \"{route}\" JVMRoute"
    ))
}

/// STATUS: the node's load factor, taken once the node is found to answer (a lower one either
/// way; one that says it is broken, `-1`, is not looked at).
fn status(table: &mut Table, parameters: &Parameters, started_us: u128) -> Execution {
    let check = match status_check(table, parameters) {
        Ok(check) => check,
        Err(refusal) => return Execution::Answered(Err(refusal)),
    };
    if let Some((route, _)) = &check.node {
        table.heard(route);
    }
    match check.load {
        Some(-1) => Execution::Answered(check.finish(table, true, started_us)),
        _ => Execution::Check(check),
    }
}

fn status_check(table: &Table, parameters: &Parameters) -> Result<Check, McmpError> {
    let mut load = None;
    for (name, value) in &parameters.0 {
        let value = value.as_deref().unwrap_or_default();
        if name.eq_ignore_ascii_case("jvmroute") {
            sized(value, ROUTE_SIZE, "JVMRoute field too big")?;
        } else if name.eq_ignore_ascii_case("load") {
            let valid = parameters::leading_int(value).filter(|load| (-1..=100).contains(load));
            load = Some(valid.ok_or_else(|| syntax("Bad value for Load"))?);
        } else {
            return Err(syntax(format!("Invalid field \"{name}\" in message")));
        }
    }
    let route = parameters.route()?;
    let node = table.node(route).ok_or_else(|| unknown_node(route))?;
    Ok(Check::of(node, load, "STATUS"))
}

/// PING: of a node (its route), of an address (scheme, host and port: looked at only if one
/// of the balancer's nodes has it, so that a PING cannot make the balancer connect anywhere
/// else), or of the balancer itself (nothing given).
fn ping(table: &mut Table, parameters: &Parameters, started_us: u128) -> Execution {
    match ping_check(table, parameters) {
        Ok(Some(check)) if check.address.is_empty() => {
            Execution::Answered(check.finish(table, false, started_us))
        }
        Ok(Some(check)) => Execution::Check(check),
        Ok(None) => Execution::Answered(Ok(answer_with_state("PING", None, true, started_us))),
        Err(refusal) => Execution::Answered(Err(refusal)),
    }
}

/// What a PING looks at: None for the balancer itself; a check with no address for an address
/// no node has.
fn ping_check(table: &Table, parameters: &Parameters) -> Result<Option<Check>, McmpError> {
    let (mut route, mut scheme, mut host, mut port) = (None, None, None, None);
    // mod_manager stops at the first empty name.
    for (name, value) in parameters.0.iter().take_while(|(name, _)| !name.is_empty()) {
        let value = value.as_deref().unwrap_or_default();
        match name.to_ascii_lowercase().as_str() {
            "jvmroute" => route = Some(sized(value, ROUTE_SIZE, "JVMRoute field too big")?),
            "scheme" => {
                if !["ajp", "http", "https", "ws", "wss"]
                    .contains(&value.to_ascii_lowercase().as_str())
                {
                    // mod_manager's words, without the kind before them.
                    return Err(McmpError {
                        kind: "SYNTAX",
                        message: format!("PING Unsupported scheme: {value}"),
                    });
                }
                scheme = Some(value);
            }
            "host" => host = Some(value),
            "port" => port = Some(value),
            _ => return Err(syntax(format!("Invalid field \"{name}\" in message"))),
        }
    }
    if let Some(route) = route.filter(|route| !route.is_empty()) {
        let node = table.node(route).ok_or_else(|| unknown_node(route))?;
        return Ok(Some(Check::of(node, None, "PING")));
    }
    match (scheme, host, port) {
        (None, None, None) => Ok(None),
        (Some(scheme), Some(host), Some(port)) => {
            let known = table.nodes().find(|node| {
                node.host == host.trim_matches(['[', ']'])
                    && node.port.to_string() == port
                    && node.scheme == scheme.to_ascii_lowercase()
            });
            Ok(Some(Check {
                address: known.map(Node::address).unwrap_or_default(),
                node: None,
                load: None,
                command: "PING",
            }))
        }
        _ => Err(syntax("Mandatory field(s) missing in message")),
    }
}

/// The HTTP response for an answer.
pub fn response(answer: Answer, format: Format) -> Response<Body> {
    match answer {
        Ok(text) => {
            let mut response = Response::new(Body::from(text));
            let kind = match format {
                Format::Text => "text/plain",
                Format::Xml => "text/xml",
            };
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            response
        }
        Err(error) => {
            tracing::warn!("refused an MCMP command: {}", error.message);
            let mut response = immutant_foundation::http::page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "MCMP command refused",
                &error.message,
            );
            let headers = response.headers_mut();
            headers.insert("version", HeaderValue::from_static(VERSION));
            headers.insert("type", HeaderValue::from_static(error.kind));
            if let Ok(message) = HeaderValue::from_str(&error.message) {
                headers.insert("mess", message);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests;
