use super::*;

fn table(nodes: &[(&str, i32)]) -> Table {
    let mut table = Table::default();
    for (route, load) in nodes {
        table.configure(config(route, "127.0.0.1", false)).unwrap();
        table.status(route, *load);
        table.set_context(route, "localhost", "/app", ContextState::Enabled);
    }
    table
}

fn config(route: &str, host: &str, force: bool) -> NodeConfig {
    NodeConfig {
        route: route.to_string(),
        domain: String::new(),
        host: host.into(),
        port: 8080,
        scheme: "http".into(),
        settings: NodeSettings::default(),
        balancer: BalancerSettings {
            force,
            ..BalancerSettings::new("mycluster")
        },
    }
}

/// A session naming `route`, as the proxy reads it.
fn session(route: Option<&str>) -> impl FnOnce(&BalancerSettings) -> Option<String> {
    let route = route.map(str::to_string);
    move |_| route
}

fn route(target: Option<Target>) -> Option<String> {
    target.map(|t| t.route.clone())
}

#[test]
fn a_session_stays_on_its_node_and_new_ones_go_where_there_is_room() {
    let mut table = table(&[("one", 10), ("two", 90)]);
    assert_eq!(
        route(table.choose("h", "/app/x", session(None), &[])).as_deref(),
        Some("two")
    );
    assert_eq!(
        route(table.choose("h", "/app/x", session(Some("one")), &[])).as_deref(),
        Some("one")
    );
}

#[test]
fn disabled_takes_its_sessions_only_and_stopped_takes_nothing() {
    let mut table = table(&[("one", 50), ("two", 50)]);
    table.set_context("one", "localhost", "/app", ContextState::Disabled);
    for _ in 0..5 {
        assert_eq!(
            route(table.choose("h", "/app", session(None), &[])).as_deref(),
            Some("two")
        );
    }
    assert_eq!(
        route(table.choose("h", "/app", session(Some("one")), &[])).as_deref(),
        Some("one")
    );
    table.set_context("one", "localhost", "/app", ContextState::Stopped);
    assert_eq!(
        route(table.choose("h", "/app", session(Some("one")), &[])).as_deref(),
        Some("two")
    );
}

#[test]
fn an_unhealthy_or_tried_node_is_passed_over() {
    let mut table = table(&[("one", 50), ("two", 50)]);
    table.set_healthy("one", false);
    assert_eq!(
        route(table.choose("h", "/app", session(Some("one")), &[])).as_deref(),
        Some("two")
    );
    table.set_healthy("one", true);
    let tried = ["two".to_string()];
    assert_eq!(
        route(table.choose("h", "/app", session(Some("two")), &tried)).as_deref(),
        Some("one")
    );
}

#[test]
fn contexts_cover_whole_segments_and_aliases_pick_hosts() {
    let mut table = table(&[("one", 50)]);
    assert!(table.choose("h", "/apple", session(None), &[]).is_none());
    assert!(
        table
            .choose("h", "/app;jsessionid=x.one", session(None), &[])
            .is_some()
    );
    table.set_context("one", "shop.test", "/", ContextState::Enabled);
    assert!(
        table
            .choose("shop.test", "/app", session(None), &[])
            .is_some_and(|t| t.route == "one")
    );
}

#[test]
fn a_forced_session_whose_node_cannot_take_it_goes_nowhere_else() {
    let mut table = table(&[("one", 50), ("two", 50)]);
    table.configure(config("one", "127.0.0.1", true)).unwrap();
    table.set_healthy("one", false);
    assert!(route(table.choose("h", "/app", session(Some("one")), &[])).is_none());
    assert_eq!(
        route(table.choose("h", "/app", session(Some("gone")), &[])).as_deref(),
        Some("two"),
        "a session naming no node of the context is balanced"
    );
    table.configure(config("one", "127.0.0.1", false)).unwrap();
    table.set_healthy("one", false);
    assert_eq!(
        route(table.choose("h", "/app", session(Some("one")), &[])).as_deref(),
        Some("two")
    );
}

#[test]
fn a_node_configured_again_keeps_its_contexts_unless_it_moved() {
    let mut table = table(&[("one", 50)]);
    table.configure(config("one", "127.0.0.1", false)).unwrap();
    assert_eq!(table.contexts().count(), 1);
    table.status("one", 50);
    table.set_healthy("one", false);
    table.configure(config("one", "10.0.0.2", false)).unwrap();
    assert_eq!(table.contexts().count(), 0);
}

#[test]
fn nodes_with_about_the_same_room_take_turns() {
    let mut table = table(&[("one", 100), ("two", 99)]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(route(table.choose("h", "/app", session(None), &[])).unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn a_live_node_keeps_its_route_from_another_address() {
    let mut table = table(&[("one", 50)]);
    let impostor = config("one", "10.9.9.9", false);
    assert_eq!(table.configure(impostor), Err(Refused::RouteTaken));
    assert_eq!(table.node("one").unwrap().host, "127.0.0.1");
}

#[test]
fn a_request_counts_in_flight_while_its_target_lives() {
    let mut table = table(&[("one", 50)]);
    let in_flight = |table: &Table| {
        let node = table.node("one").unwrap().in_flight.load(Ordering::SeqCst);
        let context = table.contexts().next().unwrap();
        (node, context.in_flight.load(Ordering::SeqCst))
    };
    let target = table.choose("h", "/app", session(None), &[]).unwrap();
    assert_eq!(in_flight(&table), (1, 1));
    drop(target);
    assert_eq!(in_flight(&table), (0, 0));
}

#[test]
fn a_standby_node_takes_requests_only_when_no_other_can() {
    let mut table = table(&[("one", 0), ("two", 50)]);
    for _ in 0..3 {
        assert_eq!(
            route(table.choose("h", "/app", session(None), &[])).as_deref(),
            Some("two")
        );
    }
    table.set_healthy("two", false);
    assert_eq!(
        route(table.choose("h", "/app", session(None), &[])).as_deref(),
        Some("one")
    );
}

#[test]
fn a_standby_node_keeps_its_sessions_and_takes_new_ones_that_no_other_node_takes() {
    let mut table = table(&[("one", 0), ("two", 50)]);
    assert_eq!(
        route(table.choose("h", "/app", session(Some("one")), &[])).as_deref(),
        Some("one")
    );
    table.set_context("two", "localhost", "/app", ContextState::Disabled);
    assert_eq!(
        route(table.choose("h", "/app", session(None), &[])).as_deref(),
        Some("one")
    );
}

#[test]
fn the_session_is_read_where_the_balancer_of_the_chosen_nodes_says() {
    let mut table = table(&[("one", 50)]);
    let mut shop = config("two", "127.0.0.2", false);
    shop.balancer.name = "shop".into();
    shop.balancer.cookie = "SID".into();
    table.configure(shop).unwrap();
    table.status("two", 50);
    table.set_context("two", "localhost", "/shop", ContextState::Enabled);
    let mut asked = None;
    table.choose(
        "h",
        "/shop/cart",
        |settings: &BalancerSettings| {
            asked = Some(settings.cookie.clone());
            None
        },
        &[],
    );
    assert_eq!(asked.as_deref(), Some("SID"));
}

#[test]
fn a_command_cannot_make_more_balancers_than_nodes() {
    let mut table = table(&[("one", 50)]);
    for n in 0..50 {
        let mut named = config("one", "127.0.0.1", false);
        named.balancer.name = format!("b{n}");
        table.configure(named).unwrap();
    }
    assert_eq!(table.balancers().count(), 1);
}

#[test]
fn a_node_configured_again_stays_as_the_health_checks_found_it() {
    let mut table = table(&[("one", 50)]);
    table.set_healthy("one", false);
    table.configure(config("one", "127.0.0.1", false)).unwrap();
    let node = table.node("one").unwrap();
    assert!(!node.healthy && node.found_unreachable.is_some());
    assert_eq!(node.load, 0, "a standby until its next STATUS");
    assert!(table.choose("h", "/app", session(None), &[]).is_none());
}

#[test]
fn only_nodes_long_unreachable_are_forgotten() {
    let mut table = table(&[("one", 50), ("two", 50)]);
    table.set_healthy("one", false);
    assert_eq!(table.forget_unreachable(Duration::ZERO), ["one"]);
    assert!(table.node("one").is_none() && table.node("two").is_some());
    assert_eq!(table.contexts().count(), 1);
}

#[test]
fn a_node_that_leaves_takes_its_contexts() {
    let mut table = table(&[("one", 50)]);
    assert!(table.remove_node("one"));
    assert!(table.choose("h", "/app", session(None), &[]).is_none());
    assert_eq!(table.contexts().count(), 0);
}
