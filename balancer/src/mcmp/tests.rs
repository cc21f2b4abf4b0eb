use super::*;

fn run(table: &mut Table, command: &str, wildcard: bool, body: &str) -> Answer {
    execute(table, command, wildcard, body.as_bytes(), 42)
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
    let enable = "JVMRoute=one&Alias=default-host%2Clocalhost&Context=%2Fapp";
    assert_eq!(
        run(&mut table, "ENABLE-APP", false, enable),
        Ok(String::new())
    );
    let context = table.contexts().next().unwrap();
    assert_eq!(
        (context.path.as_str(), context.state),
        ("/app", ContextState::Enabled)
    );
    assert_eq!(context.aliases, ["default-host", "localhost"]);
    assert_eq!(
        run(&mut table, "STATUS", false, "JVMRoute=one&Load=80"),
        Ok("Type=STATUS-RSP&JVMRoute=one&State=OK&id=42\n".to_string())
    );
    assert_eq!(table.node("one").unwrap().load, 80);
    let stop = run(&mut table, "STOP-APP", false, enable).unwrap();
    assert_eq!(
        stop,
        "Type=STOP-APP-RSP&JvmRoute=one&Alias=default-host,localhost&Context=/app&Requests=0\n"
    );
    let info = run(&mut table, "INFO", false, "").unwrap();
    assert!(
        info.starts_with("Node: [1],Name: one,Balancer: mycluster,"),
        "{info}"
    );
    assert!(
        info.contains("Context: [1:1:1], Context: /app, Status: STOPPED"),
        "{info}"
    );
    assert_eq!(
        run(&mut table, "REMOVE-APP", true, "JVMRoute=one"),
        Ok(String::new())
    );
    assert!(table.node("one").is_none());
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
        "SYNTAX: Invalid field \"evil\" in message"
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
    assert_eq!(table.node("one").unwrap().load, 1);
}

#[test]
fn a_bare_ping_is_answered() {
    let mut table = Table::default();
    assert_eq!(
        run(&mut table, "PING", false, ""),
        Ok("Type=PING-RSP&State=OK&id=42\n".to_string())
    );
}
