use super::*;

/// An install holding the shipped configs.
fn install() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    for name in ["standalone.toml", "standalone-ha.toml"] {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name);
        std::fs::copy(shipped, config.join(name)).unwrap();
    }
    home
}

fn load(home: &Path, name: &str, given: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
    let properties = Properties::new(
        given.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        home.to_path_buf(),
    )?;
    ServerConfig::load(name, &properties).map(|(config, _)| config)
}

#[test]
fn shipped_configs_load_with_defaults() {
    let home = install();
    let config = load(home.path(), "standalone.toml", &[]).unwrap();
    assert_eq!(config.http_port, 8080);
    assert_eq!(config.management_port, 9990);
    assert_eq!(config.bind_address.to_string(), "127.0.0.1");
    assert_eq!(config.data_dir, home.path().join("data"));
    assert_eq!(config.deployments, home.path().join("deployments"));
    assert!(config.cluster.is_none());
    let secret = [("immutant.cluster.secret", "s3cret")];
    let ha = load(home.path(), "standalone-ha", &secret).unwrap();
    assert_eq!(
        ha.cluster.unwrap().multicast_address.to_string(),
        "230.0.0.4"
    );
}

#[test]
fn node_names_that_are_not_plain_are_refused() {
    let home = install();
    let error = load(
        home.path(),
        "standalone.toml",
        &[("jboss.node.name", "../../escape")],
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("plain name"), "{error}");
}

#[test]
fn a_clustered_node_needs_a_secret_and_never_shows_it() {
    let home = install();
    let error = load(home.path(), "standalone-ha", &[])
        .unwrap_err()
        .to_string();
    assert!(error.contains("-Dimmutant.cluster.secret"), "{error}");
    let file = home.path().join("secret");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let path = file.display().to_string();
    let from_file = [("immutant.cluster.secret-file", path.as_str())];
    let config = load(home.path(), "standalone-ha", &from_file).unwrap();
    let cluster = config.cluster.unwrap();
    assert_eq!(cluster.secret.expose(), b"from-a-file");
    let shown = format!("{cluster:?} {}", serde_json::to_string(&cluster).unwrap());
    assert!(!shown.contains("from-a-file"), "{shown}");
    let missing = [("immutant.cluster.secret-file", "/nonexistent/secret")];
    let error = load(home.path(), "standalone-ha", &missing)
        .unwrap_err()
        .to_string();
    assert!(error.contains("/nonexistent/secret"), "{error}");
}

#[test]
fn a_node_names_its_groups_by_commas_and_a_bad_name_says_how_to_write_them() {
    let home = install();
    let config = load(home.path(), "standalone", &[]).unwrap();
    assert!(config.groups.is_empty());
    let groups = [("immutant.node.groups", "web, workers")];
    let config = load(home.path(), "standalone", &groups).unwrap();
    assert_eq!(config.groups, ["web", "workers"]);
    let bad = [("immutant.node.groups", "web,batch jobs")];
    let error = load(home.path(), "standalone", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("batch jobs") && error.contains("-Dimmutant.node.groups=web,workers"),
        "{error}"
    );
}

#[test]
fn offset_shifts_every_port() {
    let home = install();
    let config = load(
        home.path(),
        "standalone.toml",
        &[("jboss.socket.binding.port-offset", "100")],
    )
    .unwrap();
    assert_eq!((config.http_port, config.management_port), (8180, 10090));
}

#[test]
fn an_offset_past_the_last_port_is_refused() {
    let home = install();
    let error = load(
        home.path(),
        "standalone.toml",
        &[("jboss.socket.binding.port-offset", "60000")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("jboss.socket.binding.port-offset=60000"),
        "{error}"
    );
    assert!(error.contains("55545"), "{error}");
}

#[test]
fn a_missing_config_lists_the_ones_there() {
    let home = install();
    let error = load(home.path(), "standalone-ha.xml", &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("standalone-ha.toml, standalone.toml"),
        "{error}"
    );
}
