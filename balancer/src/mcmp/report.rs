//! INFO and DUMP: what the balancer knows, line for line in `mod_manager`'s plain-text
//! formats (balancers, nodes, virtual hosts, contexts), or element for element in its XML ones
//! (for a client that accepts `text/xml`). Ids are the balancer's own: a node's is the number
//! it was given; hosts and contexts are numbered in the order they are listed.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::super::table::{Context, ContextState, Node, Table};

/// Seconds, as mod_manager prints durations kept in microseconds.
fn seconds(microseconds: i64) -> i64 {
    microseconds / 1_000_000
}

/// `flushpackets` as INFO names it.
fn flush_name(flush_packets: u8) -> &'static str {
    ["Off", "On", "Auto"]
        .get(usize::from(flush_packets))
        .unwrap_or(&"Off")
}

/// Each virtual host of each node once, `(node id, context)` of its first context, in order.
fn hosts(table: &Table) -> Vec<(u64, &Context)> {
    let mut seen: Vec<(u64, &Context)> = Vec::new();
    for context in table.contexts() {
        let node = node_id(table, context);
        if !seen
            .iter()
            .any(|(id, c)| *id == node && c.vhost == context.vhost)
        {
            seen.push((node, context));
        }
    }
    seen
}

fn node_id(table: &Table, context: &Context) -> u64 {
    table.node(&context.route).map_or(0, |node| node.id)
}

/// INFO: nodes with their counts, then virtual hosts, then contexts.
pub fn info(table: &Table) -> String {
    let mut out = String::new();
    for node in table.nodes() {
        let settings = &node.settings;
        let flush = flush_name(settings.flush_packets);
        let _ = writeln!(
            out,
            "Node: [{}],Name: {},Balancer: {},LBGroup: {},Host: {},Port: {},Type: {},Flushpackets: {flush},Flushwait: {},Ping: {},Smax: {},Ttl: {},Elected: {},Read: 0,Transfered: 0,Connected: {},Load: {}",
            node.id,
            node.route,
            node.balancer,
            node.domain,
            node.host,
            node.port,
            node.scheme,
            settings.flush_wait_us / 1000,
            seconds(settings.ping_us),
            settings.smax,
            seconds(settings.ttl_us),
            node.elected,
            node.in_flight.load(Ordering::SeqCst),
            node.load
        );
    }
    for (index, (node, context)) in hosts(table).into_iter().enumerate() {
        let _ = writeln!(
            out,
            "Vhost: [{node}:{}:{index}], Alias: {}",
            context.vhost, context.alias
        );
    }
    for (index, context) in table.contexts().enumerate() {
        let _ = writeln!(
            out,
            "Context: [{}:{}:{index}], Context: {}, Status: {}",
            node_id(table, context),
            context.vhost,
            context.path,
            context.state.name().to_ascii_uppercase()
        );
    }
    out
}

/// DUMP: balancers with their sticky-session settings, nodes with theirs, virtual hosts and
/// contexts.
pub fn dump(table: &Table) -> String {
    let mut out = String::new();
    for (index, balancer) in table.balancers().enumerate() {
        let _ = writeln!(
            out,
            "balancer: [{index}] Name: {} Sticky: {} [{}]/[{}] remove: {} force: {} Timeout: {} maxAttempts: {}",
            balancer.name,
            u8::from(balancer.sticky),
            balancer.cookie,
            balancer.path_parameter,
            u8::from(balancer.remove),
            u8::from(balancer.force),
            balancer.wait_worker,
            balancer.max_attempts
        );
    }
    for (index, node) in table.nodes().enumerate() {
        let _ = writeln!(out, "node: [{index}:{}],{}", node.id, node_settings(node));
    }
    for (index, (node, context)) in hosts(table).into_iter().enumerate() {
        let _ = writeln!(
            out,
            "host: {index} [{}] vhost: {} node: {node}",
            context.alias, context.vhost
        );
    }
    for (index, context) in table.contexts().enumerate() {
        let _ = writeln!(
            out,
            "context: {index} [{}] vhost: {} node: {} status: {}",
            context.path,
            context.vhost,
            node_id(table, context),
            status_number(context.state)
        );
    }
    out
}

/// mod_manager's number for a context's state.
fn status_number(state: ContextState) -> u8 {
    match state {
        ContextState::Enabled => 1,
        ContextState::Disabled => 2,
        ContextState::Stopped => 3,
    }
}

/// A node's part of its DUMP line.
fn node_settings(node: &Node) -> String {
    let settings = &node.settings;
    format!(
        "Balancer: {},JVMRoute: {},LBGroup: [{}],Host: {},Port: {},Type: {},flushpackets: {},flushwait: {},ping: {},smax: {},ttl: {},timeout: {}",
        node.balancer,
        node.route,
        node.domain,
        node.host,
        node.port,
        node.scheme,
        settings.flush_packets,
        settings.flush_wait_us / 1000,
        seconds(settings.ping_us),
        settings.smax,
        seconds(settings.ttl_us),
        seconds(settings.timeout_us)
    )
}

/// A value inside XML text or an attribute. MCMP values hold no `<`, `>` or quotes; an `&`
/// (sent as `%26`) is the one left to escape.
fn xml(value: &str) -> String {
    value.replace('&', "&amp;")
}

/// INFO in mod_manager's XML.
pub fn info_xml(table: &Table) -> String {
    let mut out = String::from("<?xml version=\"1.0\" standalone=\"yes\" ?>\n<Info><Nodes>");
    for node in table.nodes() {
        let settings = &node.settings;
        let flush = flush_name(settings.flush_packets);
        let _ = write!(
            out,
            "<Node id=\"{}\" name=\"{}\"><Balancer>{}</Balancer><LBGroup>{}</LBGroup><Host>{}</Host><Port>{}</Port><Type>{}</Type><Flushpackets>{flush}</Flushpackets><Flushwait>{}</Flushwait><Ping>{}</Ping><Smax>{}</Smax><Ttl>{}</Ttl><Elected>{}</Elected><Read>0</Read><Transfered>0</Transfered><Connected>{}</Connected><Load>{}</Load></Node>",
            node.id,
            xml(&node.route),
            xml(&node.balancer),
            xml(&node.domain),
            xml(&node.host),
            node.port,
            node.scheme,
            settings.flush_wait_us / 1000,
            seconds(settings.ping_us),
            settings.smax,
            seconds(settings.ttl_us),
            node.elected,
            node.in_flight.load(Ordering::SeqCst),
            node.load
        );
    }
    out.push_str("</Nodes><Vhosts>");
    for (node, context) in hosts(table) {
        let _ = write!(
            out,
            "<Vhost id=\"{}\" alias=\"{}\"><Node id=\"{node}\"/></Vhost>",
            context.vhost,
            xml(&context.alias)
        );
    }
    out.push_str("</Vhosts><Contexts>");
    for (index, context) in table.contexts().enumerate() {
        let _ = write!(
            out,
            "<Context id=\"{index}\"><Status id=\"{}\">{}</Status><Context>{}</Context><Node id=\"{}\"/><Vhost id=\"{}\"/></Context>",
            status_number(context.state),
            context.state.name().to_ascii_uppercase(),
            xml(&context.path),
            node_id(table, context),
            context.vhost
        );
    }
    out.push_str("</Contexts></Info>");
    out
}

/// DUMP in mod_manager's XML (its odd spaces inside `<Host>` too, as it prints them).
pub fn dump_xml(table: &Table) -> String {
    let mut out = String::from("<?xml version=\"1.0\" standalone=\"yes\" ?>\n<Dump><Balancers>");
    for (index, balancer) in table.balancers().enumerate() {
        let _ = write!(
            out,
            "<Balancer id=\"{index}\" name=\"{}\"><StickySession><Enabled>{}</Enabled><Cookie>{}</Cookie><Path>{}</Path><Remove>{}</Remove><Force>{}</Force></StickySession><Timeout>{}</Timeout><MaxAttempts>{}</MaxAttempts></Balancer>",
            xml(&balancer.name),
            u8::from(balancer.sticky),
            xml(&balancer.cookie),
            xml(&balancer.path_parameter),
            u8::from(balancer.remove),
            u8::from(balancer.force),
            balancer.wait_worker,
            balancer.max_attempts
        );
    }
    out.push_str("</Balancers><Nodes>");
    for node in table.nodes() {
        let settings = &node.settings;
        let _ = write!(
            out,
            "<Node id=\"{}\"><Balancer>{}</Balancer><JVMRoute>{}</JVMRoute><LBGroup>{}</LBGroup><Host>{}</Host><Port>{}</Port><Type>{}</Type><FlushPackets>{}</FlushPackets><FlushWait>{}</FlushWait><Ping>{}</Ping><Smax>{}</Smax><Ttl>{}</Ttl><Timeout>{}</Timeout></Node>",
            node.id,
            xml(&node.balancer),
            xml(&node.route),
            xml(&node.domain),
            xml(&node.host),
            node.port,
            node.scheme,
            settings.flush_packets,
            settings.flush_wait_us / 1000,
            seconds(settings.ping_us),
            settings.smax,
            seconds(settings.ttl_us),
            seconds(settings.timeout_us)
        );
    }
    out.push_str("</Nodes><Hosts>");
    let (wide, narrow) = (" ".repeat(31), " ".repeat(27));
    for (index, (node, context)) in hosts(table).into_iter().enumerate() {
        let _ = write!(
            out,
            "<Host id=\"{index}\" alias=\"{}\">{wide}<Vhost>{}</Vhost>{wide}<Node>{node}</Node>{narrow}</Host>",
            xml(&context.alias),
            context.vhost
        );
    }
    out.push_str("</Hosts><Contexts>");
    for (index, context) in table.contexts().enumerate() {
        let _ = write!(
            out,
            "<Context id=\"{index}\" path=\"{}\"><Vhost>{}</Vhost><Node>{}</Node><Status id=\"{}\">{}</Status></Context>",
            xml(&context.path),
            context.vhost,
            node_id(table, context),
            status_number(context.state),
            context.state.name().to_ascii_uppercase()
        );
    }
    out.push_str("</Contexts></Dump>");
    out
}
