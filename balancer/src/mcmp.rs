//! MCMP, mod_cluster's management protocol, as httpd's `mod_manager` receives it: HTTP
//! requests whose method is the command (CONFIG, ENABLE-APP, DISABLE-APP, STOP-APP,
//! REMOVE-APP, STATUS, PING, INFO, DUMP, VERSION) and whose body is form-encoded parameters
//! (names in any case). Answers are `mod_manager`'s own: `200` with the bodies it gives, or
//! `500` with the `Version`, `Type` and `Mess` headers saying what is wrong. A command that is
//! refused for what it says changes nothing (one refused because the table is full may have
//! done part of its work, as mod_manager's does).

use std::fmt::Write;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};

use super::table::{ContextState, NodeConfig, Refused, Table};

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

/// The longest value of each field, as `mod_manager` limits them.
const MAX_ROUTE: usize = 64;
const MAX_BALANCER: usize = 40;
const MAX_HOST: usize = 64;
const MAX_ALIAS: usize = 254;
const MAX_CONTEXT: usize = 79;
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

fn unknown_node(route: &str) -> McmpError {
    McmpError {
        kind: "MEM",
        message: format!("MEM: Can't read node with \"{route}\" JVMRoute"),
    }
}

/// A command's parameters: names lower-cased, values decoded.
struct Parameters(Vec<(String, String)>);

impl Parameters {
    /// Parses a form body as `mod_manager` does: `&`-separated `name=value` pairs, `%XX`
    /// decoded; characters that would let a value escape its place are refused.
    fn parse(body: &[u8]) -> Result<Parameters, McmpError> {
        let unparsable = || {
            syntax(
                "Can't parse MCMP message. It might have contained illegal symbols or unknown elements.",
            )
        };
        let text = std::str::from_utf8(body).map_err(|_| unparsable())?;
        let text = text.trim_end_matches(['\r', '\n']);
        let mut pairs = Vec::new();
        for pair in text.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').ok_or_else(unparsable)?;
            if !name.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
                return Err(unparsable());
            }
            let value = decode(value).ok_or_else(unparsable)?;
            if value.contains(['<', '>', '"', '\'', '\r', '\n']) {
                return Err(unparsable());
            }
            pairs.push((name.to_ascii_lowercase(), value));
        }
        Ok(Parameters(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// The node's route, which every node command needs.
    fn route(&self) -> Result<&str, McmpError> {
        match self.get("jvmroute") {
            None | Some("") => Err(syntax("JVMRoute can't be empty")),
            Some(route) if route.len() >= MAX_ROUTE => Err(syntax("JVMRoute field too big")),
            Some(route) => Ok(route),
        }
    }

    /// A comma-separated list.
    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|value| {
                value
                    .split(',')
                    .map(|item| item.trim().to_string())
                    .filter(|item| !item.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `%XX` decoding; `+` stays as it is, as `mod_manager` leaves it.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a command answers: a body of text (empty for most), or a refusal.
pub type Answer = Result<String, McmpError>;

/// Carries out `command` (its method, upper-case) on the table. `wildcard` is the `/*` form of
/// the app commands: every context of the node. `started_us` is when the balancer started,
/// the `id` of STATUS and PING answers.
pub fn execute(
    table: &mut Table,
    command: &str,
    wildcard: bool,
    body: &[u8],
    started_us: u128,
) -> Answer {
    let parameters = Parameters::parse(body)?;
    match command {
        "CONFIG" => config(table, &parameters),
        "ENABLE-APP" => app(table, &parameters, wildcard, Some(ContextState::Enabled)),
        "DISABLE-APP" => app(table, &parameters, wildcard, Some(ContextState::Disabled)),
        "STOP-APP" => app(table, &parameters, wildcard, Some(ContextState::Stopped)),
        "REMOVE-APP" => app(table, &parameters, wildcard, None),
        "STATUS" => status(table, &parameters, started_us),
        "PING" => ping(table, &parameters, started_us),
        "INFO" => Ok(info(table)),
        "DUMP" => Ok(dump(table)),
        "VERSION" => Ok(format!(
            "release: immutant-balancer/{}, protocol: {VERSION}\n",
            crate::VERSION
        )),
        _ => Err(syntax("Command is not supported")),
    }
}

fn config(table: &mut Table, parameters: &Parameters) -> Answer {
    if parameters.0.iter().any(|(_, value)| value.is_empty()) || parameters.0.is_empty() {
        return Err(syntax(
            "Can't parse MCMP message. It might have contained illegal symbols or unknown elements.",
        ));
    }
    let route = parameters.route()?;
    let balancer = parameters.get("balancer").unwrap_or("mycluster");
    if balancer.len() >= MAX_BALANCER {
        return Err(syntax("Balancer field too big"));
    }
    let host = parameters.get("host").unwrap_or("localhost");
    if host.len() >= MAX_HOST {
        return Err(syntax("Host field too big"));
    }
    let port = match parameters.get("port") {
        None => 8009,
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| syntax("Port field too big"))?,
    };
    let scheme = parameters.get("type").unwrap_or("ajp").to_ascii_lowercase();
    if scheme != "http" {
        return Err(McmpError {
            kind: "GENERAL",
            message: format!(
                "GENERAL: this balancer speaks http to its nodes, not {scheme}; configure the node's connector as http"
            ),
        });
    }
    let (aliases, contexts) = (parameters.list("alias"), parameters.list("context"));
    match (aliases.is_empty(), contexts.is_empty()) {
        (false, true) => return Err(syntax("Alias without Context")),
        (true, false) => return Err(syntax("Context without Alias")),
        _ => {}
    }
    check_contexts(&aliases, &contexts)?;
    let configured = table.configure(NodeConfig {
        route: route.to_string(),
        balancer: balancer.to_ascii_lowercase(),
        domain: parameters.get("domain").unwrap_or_default().to_string(),
        host: host.trim_matches(['[', ']']).to_string(),
        port,
        scheme,
    });
    match configured {
        Err(Refused::RouteTaken) => {
            return Err(McmpError {
                kind: "MEM",
                message: format!("MEM: Node with \"{route}\" JVMRoute already exists"),
            });
        }
        Err(Refused::Full) => {
            return Err(McmpError {
                kind: "MEM",
                message: format!("MEM: Can't update or insert node with \"{route}\" JVMRoute"),
            });
        }
        Ok(()) => {}
    }
    for context in &contexts {
        table
            .set_context(route, context, &aliases, ContextState::Stopped)
            .ok_or_else(|| context_full(route))?;
    }
    Ok(String::new())
}

fn app(
    table: &mut Table,
    parameters: &Parameters,
    wildcard: bool,
    state: Option<ContextState>,
) -> Answer {
    let route = parameters.route()?;
    if wildcard {
        let found = match state {
            Some(state) => table.set_all_contexts(route, state).is_some(),
            None => table.remove_node(route),
        };
        return match found {
            true => Ok(String::new()),
            false => Err(unknown_node(route)),
        };
    }
    let (aliases, contexts) = (parameters.list("alias"), parameters.list("context"));
    match (aliases.is_empty(), contexts.is_empty()) {
        (true, true) => return Err(syntax("No Context and Alias in APP command")),
        (false, true) => return Err(syntax("Alias without Context")),
        (true, false) => return Err(syntax("Context without Alias")),
        _ => {}
    }
    check_contexts(&aliases, &contexts)?;
    if table.node(route).is_none() {
        return Err(unknown_node(route));
    }
    table.heard(route);
    let mut requests = 0;
    for context in &contexts {
        match state {
            Some(state) => {
                requests += table
                    .set_context(route, context, &aliases, state)
                    .ok_or_else(|| context_full(route))?;
            }
            None => {
                table.remove_context(route, context, &aliases);
            }
        }
    }
    // Old mod_manager's answer to STOP-APP, which nodes poll until no request is in flight.
    Ok(match state {
        Some(ContextState::Stopped) => format!(
            "Type=STOP-APP-RSP&JvmRoute={route}&Alias={}&Context={}&Requests={requests}\n",
            aliases.join(","),
            contexts.join(",")
        ),
        _ => String::new(),
    })
}

/// Aliases and contexts as `mod_manager` takes them: each short enough, contexts paths.
fn check_contexts(aliases: &[String], contexts: &[String]) -> Result<(), McmpError> {
    if aliases.iter().any(|alias| alias.len() > MAX_ALIAS) {
        return Err(syntax("Alias field too big"));
    }
    if contexts.iter().any(|context| context.len() > MAX_CONTEXT) {
        return Err(syntax("Context field too big"));
    }
    if contexts.iter().any(|context| !context.starts_with('/')) {
        return Err(syntax("Context must be a path, starting with /"));
    }
    Ok(())
}

fn context_full(route: &str) -> McmpError {
    McmpError {
        kind: "MEM",
        message: format!("MEM: Can't update or insert context for node with \"{route}\" JVMRoute"),
    }
}

fn status(table: &mut Table, parameters: &Parameters, started_us: u128) -> Answer {
    if let Some((name, _)) = parameters
        .0
        .iter()
        .find(|(name, _)| name != "jvmroute" && name != "load")
    {
        return Err(syntax(format!("Invalid field \"{name}\" in message")));
    }
    let route = parameters.route()?;
    let load: i32 = match parameters.get("load") {
        Some(load) => load
            .parse()
            .ok()
            .filter(|load| (-1..=100).contains(load))
            .ok_or_else(|| syntax("Bad value for Load"))?,
        None => -2,
    };
    if load != -2 && !table.status(route, load) {
        return Err(unknown_node(route));
    }
    let node = table.node(route).ok_or_else(|| unknown_node(route))?;
    let state = if node.healthy { "OK" } else { "NOTOK" };
    Ok(format!(
        "Type=STATUS-RSP&JVMRoute={route}&State={state}&id={started_us}\n"
    ))
}

fn ping(table: &mut Table, parameters: &Parameters, started_us: u128) -> Answer {
    if let Some((name, _)) = parameters
        .0
        .iter()
        .find(|(name, _)| !["jvmroute", "scheme", "host", "port"].contains(&name.as_str()))
    {
        return Err(syntax(format!("Invalid field \"{name}\" in message")));
    }
    match parameters.get("jvmroute") {
        Some(route) => {
            let node = table.node(route).ok_or_else(|| unknown_node(route))?;
            let state = if node.healthy { "OK" } else { "NOTOK" };
            Ok(format!(
                "Type=PING-RSP&JVMRoute={route}&State={state}&id={started_us}\n"
            ))
        }
        None => Ok(format!("Type=PING-RSP&State=OK&id={started_us}\n")),
    }
}

/// INFO, as `mod_manager` prints it: nodes, then virtual hosts, then contexts.
pub fn info(table: &Table) -> String {
    let mut out = String::new();
    for node in table.nodes() {
        let _ = writeln!(
            out,
            "Node: [{}],Name: {},Balancer: {},LBGroup: {},Host: {},Port: {},Type: {},Flushpackets: Off,Flushwait: 10,Ping: 10,Smax: -1,Ttl: 60,Elected: {},Read: 0,Transfered: 0,Connected: {},Load: {}",
            node.id,
            node.route,
            node.balancer,
            node.domain,
            node.host,
            node.port,
            node.scheme,
            node.elected,
            node.in_flight.load(std::sync::atomic::Ordering::SeqCst),
            node.load
        );
    }
    let contexts: Vec<_> = table.contexts().collect();
    for (index, context) in contexts.iter().enumerate() {
        let node = table.node(&context.route).map_or(0, |node| node.id);
        for (alias_index, alias) in context.aliases.iter().enumerate() {
            let _ = writeln!(
                out,
                "Vhost: [{node}:{}:{}], Alias: {alias}",
                index + 1,
                alias_index + 1
            );
        }
    }
    for (index, context) in contexts.iter().enumerate() {
        let node = table.node(&context.route).map_or(0, |node| node.id);
        let status = context.state.name().to_ascii_uppercase();
        let _ = writeln!(
            out,
            "Context: [{node}:{}:{}], Context: {}, Status: {status}",
            index + 1,
            index + 1,
            context.path
        );
    }
    out
}

/// DUMP, as `mod_manager` prints it.
fn dump(table: &Table) -> String {
    let mut out = String::new();
    let mut balancers: Vec<&str> = table.nodes().map(|node| node.balancer.as_str()).collect();
    balancers.sort();
    balancers.dedup();
    for (index, balancer) in balancers.iter().enumerate() {
        let _ = writeln!(
            out,
            "balancer: [{}] Name: {balancer} Sticky: 1 [JSESSIONID]/[jsessionid] remove: 0 force: 0 Timeout: 0 maxAttempts: 1",
            index + 1
        );
    }
    for node in table.nodes() {
        let _ = writeln!(
            out,
            "node: [{}:{}],Balancer: {},JVMRoute: {},LBGroup: [{}],Host: {},Port: {},Type: {},flushpackets: 0,flushwait: 10,ping: 10,smax: -1,ttl: 60,timeout: 0",
            node.id,
            node.id,
            node.balancer,
            node.route,
            node.domain,
            node.host,
            node.port,
            node.scheme
        );
    }
    for (index, context) in table.contexts().enumerate() {
        let node = table.node(&context.route).map_or(0, |node| node.id);
        for alias in &context.aliases {
            let _ = writeln!(
                out,
                "host: {} [{alias}] vhost: {} node: {node}",
                index + 1,
                index + 1
            );
        }
        // mod_manager's numbers for the states.
        let status = context.state as u8 + 1;
        let _ = writeln!(
            out,
            "context: {} [{}] vhost: {} node: {node} status: {status}",
            index + 1,
            context.path,
            index + 1
        );
    }
    out
}

/// The HTTP response for an answer.
pub fn response(answer: Answer) -> Response<Body> {
    match answer {
        Ok(text) => {
            let mut response = Response::new(Body::from(text));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
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
