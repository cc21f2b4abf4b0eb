use super::*;

/// Carries out a command; a node to look at is taken to answer.
fn run(table: &mut Table, command: &str, wildcard: bool, body: &str) -> Answer {
    match execute(
        table,
        command,
        wildcard,
        body.as_bytes(),
        42,
        Format::of(command, None),
    ) {
        Execution::Answered(answer) => answer,
        Execution::Check(check) => check.finish(table, true, 42),
    }
}

fn configured() -> Table {
    let mut table = Table::default();
    let body =
        "JVMRoute=one&Balancer=mycluster&Host=127.0.0.1&Port=8080&StickySessionForce=No&Type=http";
    assert_eq!(run(&mut table, "CONFIG", false, body), Ok(String::new()));
    table
}

#[test]
fn a_live_node_keeps_its_route() {
    let mut table = configured();
    let impostor = "JVMRoute=one&Host=10.9.9.9&Port=8080&Type=http";
    assert_eq!(
        run(&mut table, "CONFIG", false, impostor)
            .unwrap_err()
            .message,
        "MEM: Node with \"one\" JVMRoute already exists"
    );
    assert!(run(&mut table, "STATUS", false, "JVMRoute=one&Load=5\r\nX=1").is_err());
    assert!(run(&mut table, "STATUS", false, "JVMRoute=one&Lo\nad=5").is_err());
}

#[test]
fn a_node_configures_enables_and_reports_its_load() {
    let mut table = configured();
    let enable = "JVMRoute=one&Alias=default-host%2CLocalhost&Context=%2Fapp";
    assert_eq!(
        run(&mut table, "ENABLE-APP", false, enable).unwrap(),
        "Type=ENABLE-APP-RSP\nJvmRoute=one\nAlias=default-host Contexts=/app\n\nAlias=localhost Contexts=/app\n\n"
    );
    let contexts: Vec<_> = table
        .contexts()
        .map(|c| (c.vhost, c.alias.as_str(), c.path.as_str(), c.state))
        .collect();
    assert_eq!(
        contexts,
        [
            (1, "default-host", "/app", ContextState::Enabled),
            (2, "localhost", "/app", ContextState::Enabled)
        ]
    );
    assert_eq!(
        run(&mut table, "STATUS", false, "JVMRoute=one&Load=80"),
        Ok("Type=STATUS-RSP&JVMRoute=one&State=OK&id=42\n".to_string())
    );
    assert_eq!(table.node("one").unwrap().load, 80);
    let stop = "JVMRoute=one&Alias=localhost&Context=/app,/other";
    assert_eq!(
        run(&mut table, "STOP-APP", false, stop).unwrap(),
        "Type=STOP-APP-RSP\nJvmRoute=one\nAlias=localhost Contexts=/app,/other\n\n"
    );
    let info = run(&mut table, "INFO", false, "").unwrap();
    assert_eq!(
        info,
        "Node: [1],Name: one,Balancer: mycluster,LBGroup: ,Host: 127.0.0.1,Port: 8080,Type: http,Flushpackets: Off,Flushwait: 10,Ping: 10,Smax: -1,Ttl: 60,Elected: 0,Read: 0,Transfered: 0,Connected: 0,Load: 80\n\
         Vhost: [1:1:0], Alias: default-host\n\
         Vhost: [1:2:1], Alias: localhost\n\
         Context: [1:1:0], Context: /app, Status: ENABLED\n\
         Context: [1:2:1], Context: /app, Status: STOPPED\n\
         Context: [1:2:2], Context: /other, Status: STOPPED\n"
    );
    let remove = "JVMRoute=one&Alias=localhost,nowhere&Context=/app";
    assert_eq!(
        run(&mut table, "REMOVE-APP", false, remove).unwrap(),
        "Type=REMOVE-APP-RSP\nJvmRoute=one\nAlias=localhost Contexts=/app\n\n"
    );
    assert_eq!(table.contexts().count(), 2);
    assert_eq!(
        run(&mut table, "REMOVE-APP", true, "JVMRoute=one"),
        Ok(String::new())
    );
    assert!(table.node("one").is_none());
}

#[test]
fn config_settings_are_kept_and_dumped_as_mod_manager_dumps_them() {
    let mut table = Table::default();
    let body = "JVMRoute=one&Host=127.0.0.1&Port=8080&Type=http&Balancer=Shop&Domain=d1&StickySessionCookie=SID&StickySessionPath=sid&StickySessionRemove=Yes&WaitWorker=3&Maxattempts=2&flushpackets=auto&flushwait=20&ping=5&smax=7&ttl=2mi&Timeout=9&Alias=a.test&Context=/x";
    assert_eq!(run(&mut table, "CONFIG", false, body), Ok(String::new()));
    assert_eq!(
        run(&mut table, "DUMP", false, "").unwrap(),
        "balancer: [0] Name: shop Sticky: 1 [SID]/[sid] remove: 1 force: 1 Timeout: 3 maxAttempts: 2\n\
         node: [0:1],Balancer: shop,JVMRoute: one,LBGroup: [d1],Host: 127.0.0.1,Port: 8080,Type: http,flushpackets: 2,flushwait: 20,ping: 5,smax: 7,ttl: 120,timeout: 9\n\
         host: 0 [a.test] vhost: 1 node: 1\n\
         context: 0 [/x] vhost: 1 node: 1 status: 3\n"
    );
    // A CONFIG again with no sticky settings brings the balancer's defaults back.
    let again = "JVMRoute=one&Host=127.0.0.1&Port=8080&Type=http&Balancer=shop";
    assert_eq!(run(&mut table, "CONFIG", false, again), Ok(String::new()));
    let dump = run(&mut table, "DUMP", false, "").unwrap();
    assert!(
        dump.starts_with("balancer: [0] Name: shop Sticky: 1 [JSESSIONID]/[jsessionid] remove: 0 force: 1 Timeout: 0 maxAttempts: 1\n"),
        "{dump}"
    );
    assert!(
        dump.contains("context: 0 [/x] vhost: 1 node: 1 status: 3"),
        "{dump}"
    );
}

#[test]
fn removing_every_alias_and_context_removes_the_node() {
    let mut table = configured();
    run(
        &mut table,
        "ENABLE-APP",
        false,
        "JVMRoute=one&Alias=localhost&Context=/app",
    )
    .unwrap();
    assert_eq!(
        run(
            &mut table,
            "REMOVE-APP",
            false,
            "JVMRoute=one&Alias=*&Context=*"
        ),
        Ok("Type=REMOVE-APP-RSP\nJvmRoute=one\n".to_string())
    );
    assert!(table.node("one").is_none());
    assert_eq!(table.contexts().count(), 0);
}

#[test]
fn malformed_commands_are_refused_as_mod_manager_refuses_them_and_change_nothing() {
    let mut table = configured();
    let refused = |answer: Answer| answer.unwrap_err().message;
    assert_eq!(
        refused(run(&mut table, "CONFIG", false, "JVMRoute=")),
        "SYNTAX: Can't parse MCMP message. It might have contained illegal symbols or unknown elements."
    );
    assert_eq!(
        refused(run(&mut table, "CONFIG", false, "Host=x")),
        "SYNTAX: JVMRoute can't be empty"
    );
    assert_eq!(
        refused(run(&mut table, "CONFIG", false, "JVMRoute=two&ping=later")),
        "SYNTAX: Ping field has bad value"
    );
    assert_eq!(
        refused(run(&mut table, "ENABLE-APP", false, "JVMRoute=one")),
        "SYNTAX: No Context and Alias in APP command"
    );
    assert_eq!(
        refused(run(
            &mut table,
            "ENABLE-APP",
            false,
            "JVMRoute=one&Context=/x"
        )),
        "SYNTAX: Context without Alias"
    );
    assert_eq!(
        refused(run(&mut table, "STATUS", false, "JVMRoute=ghost&Load=5")),
        "MEM: Can't read node with \"ghost\" JVMRoute"
    );
    assert_eq!(
        refused(run(&mut table, "STATUS", false, "JVMRoute=one&Load=500")),
        "SYNTAX: Bad value for Load"
    );
    assert_eq!(
        refused(run(&mut table, "STATUS", false, "JVMRoute=one&Evil=1")),
        "SYNTAX: Invalid field \"Evil\" in message"
    );
    assert_eq!(
        refused(run(&mut table, "PING", false, "Host=127.0.0.1")),
        "SYNTAX: Mandatory field(s) missing in message"
    );
    assert!(
        refused(run(
            &mut table,
            "ENABLE-APP",
            false,
            "JVMRoute=one&Alias=a&Context=/%3Cscript%3E"
        ))
        .starts_with("SYNTAX")
    );
    assert!(
        refused(run(&mut table, "CONFIG", false, "JVMRoute=two&Type=ajp")).starts_with("GENERAL")
    );
    assert_eq!(table.contexts().count(), 0);
    assert!(table.node("two").is_none());
    assert_eq!(table.node("one").unwrap().load, 0);
}

#[test]
fn status_and_ping_say_whether_the_node_answers() {
    let mut table = configured();
    let Execution::Check(check) = execute(
        &mut table,
        "STATUS",
        false,
        b"JVMRoute=one&Load=60",
        42,
        Format::Text,
    ) else {
        panic!("a STATUS looks at the node");
    };
    assert_eq!(check.address, "127.0.0.1:8080");
    assert_eq!(
        check.finish(&mut table, false, 42),
        Ok("Type=STATUS-RSP&JVMRoute=one&State=NOTOK&id=42\n".to_string())
    );
    assert_eq!(
        table.node("one").unwrap().load,
        0,
        "the load of a node that does not answer is not taken"
    );
    // A PING for an address no node has is not looked at: it answers NOTOK at once.
    let stranger = execute(
        &mut table,
        "PING",
        false,
        b"Scheme=http&Host=10.1.1.1&Port=22",
        42,
        Format::Text,
    );
    let Execution::Answered(answer) = stranger else {
        panic!("a PING to a stranger's address made the balancer connect there");
    };
    assert_eq!(answer, Ok("Type=PING-RSP&State=NOTOK&id=42\n".to_string()));
    assert!(matches!(
        execute(
            &mut table,
            "PING",
            false,
            b"Scheme=http&Host=127.0.0.1&Port=8080",
            42,
            Format::Text,
        ),
        Execution::Check(_)
    ));
}

#[test]
fn a_bare_ping_is_answered() {
    let mut table = Table::default();
    assert_eq!(
        run(&mut table, "PING", false, ""),
        Ok("Type=PING-RSP&State=OK&id=42\n".to_string())
    );
}

#[test]
fn info_and_dump_come_in_mod_managers_xml_to_a_client_that_accepts_it() {
    let mut table = Table::default();
    let config =
        "JVMRoute=n1&Host=127.0.0.1&Port=18091&Type=http&Domain=d1&Alias=localhost&Context=/app";
    assert_eq!(run(&mut table, "CONFIG", false, config), Ok(String::new()));
    run(&mut table, "STATUS", false, "JVMRoute=n1&Load=40").unwrap();
    let xml = Format::of("INFO", Some("text/xml"));
    let Execution::Answered(info) = execute(&mut table, "INFO", false, b"", 42, xml) else {
        panic!("INFO looks at no node");
    };
    // As httpd 2.4 with mod_proxy_cluster 2.0 answered the same commands (its node id 0).
    assert_eq!(
        info.unwrap(),
        "<?xml version=\"1.0\" standalone=\"yes\" ?>\n<Info><Nodes><Node id=\"1\" name=\"n1\"><Balancer>mycluster</Balancer><LBGroup>d1</LBGroup><Host>127.0.0.1</Host><Port>18091</Port><Type>http</Type><Flushpackets>Off</Flushpackets><Flushwait>10</Flushwait><Ping>10</Ping><Smax>-1</Smax><Ttl>60</Ttl><Elected>0</Elected><Read>0</Read><Transfered>0</Transfered><Connected>0</Connected><Load>40</Load></Node></Nodes><Vhosts><Vhost id=\"1\" alias=\"localhost\"><Node id=\"1\"/></Vhost></Vhosts><Contexts><Context id=\"0\"><Status id=\"3\">STOPPED</Status><Context>/app</Context><Node id=\"1\"/><Vhost id=\"1\"/></Context></Contexts></Info>"
    );
    let Execution::Answered(dump) = execute(&mut table, "DUMP", false, b"", 42, xml) else {
        panic!("DUMP looks at no node");
    };
    let (wide, narrow) = (" ".repeat(31), " ".repeat(27));
    assert_eq!(
        dump.unwrap(),
        format!(
            "<?xml version=\"1.0\" standalone=\"yes\" ?>\n<Dump><Balancers><Balancer id=\"0\" name=\"mycluster\"><StickySession><Enabled>1</Enabled><Cookie>JSESSIONID</Cookie><Path>jsessionid</Path><Remove>0</Remove><Force>1</Force></StickySession><Timeout>0</Timeout><MaxAttempts>1</MaxAttempts></Balancer></Balancers><Nodes><Node id=\"1\"><Balancer>mycluster</Balancer><JVMRoute>n1</JVMRoute><LBGroup>d1</LBGroup><Host>127.0.0.1</Host><Port>18091</Port><Type>http</Type><FlushPackets>0</FlushPackets><FlushWait>10</FlushWait><Ping>10</Ping><Smax>-1</Smax><Ttl>60</Ttl><Timeout>0</Timeout></Node></Nodes><Hosts><Host id=\"0\" alias=\"localhost\">{wide}<Vhost>1</Vhost>{wide}<Node>1</Node>{narrow}</Host></Hosts><Contexts><Context id=\"0\" path=\"/app\"><Vhost>1</Vhost><Node>1</Node><Status id=\"3\">STOPPED</Status></Context></Contexts></Dump>"
        )
    );
    assert_eq!(Format::of("STATUS", Some("text/xml")), Format::Text);
}
