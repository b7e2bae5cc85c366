//! `docker-compose.yml` is checked here since CI has no Docker engine: it parses, names the
//! services the README promises, wires them to each other by existing service names and ports,
//! and uses only environment variables the binaries really read.

use tarefa_tests::workspace_root;

use yaml_rust2::{Yaml, YamlLoader};

fn strings(node: &Yaml) -> Vec<String> {
    node.as_vec()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn env<'a>(service: &'a Yaml, name: &str) -> Option<&'a str> {
    service["environment"][name].as_str()
}

#[test]
fn compose_file_is_valid_and_wired() {
    let text = std::fs::read_to_string(workspace_root().join("docker-compose.yml"))
        .expect("docker-compose.yml");
    let docs = YamlLoader::load_from_str(&text).expect("docker-compose.yml parses as YAML");
    let compose = &docs[0];
    let services = compose["services"].as_hash().expect("a services map");
    let names: Vec<&str> = services.keys().filter_map(Yaml::as_str).collect();
    for expected in ["redis", "jaeger", "scheduler", "executor", "python-handler"] {
        assert!(
            names.contains(&expected),
            "service {expected} missing: {names:?}"
        );
    }
    let service = |name: &str| &compose["services"][name];

    let redis = strings(&service("redis")["command"]).join(" ");
    assert!(
        redis.contains("--appendonly yes"),
        "redis runs with AOF: {redis}"
    );
    assert!(redis.contains("--maxmemory-policy noeviction"), "{redis}");

    // Published on the host's loopback only: the compose file runs without tokens, so its
    // admin API must not be open on every interface.
    let published = |name: &str, port: &str| {
        let ports = strings(&service(name)["ports"]);
        assert!(
            ports
                .iter()
                .any(|p| p.starts_with(&format!("127.0.0.1:{port}:{port}"))),
            "{name} publishes {port} on 127.0.0.1 only: {ports:?}"
        );
        assert!(
            ports.iter().all(|p| p.starts_with("127.0.0.1:")),
            "{name} publishes a port on every interface: {ports:?}"
        );
    };
    published("scheduler", "50051");
    published("scheduler", "8080");
    published("jaeger", "4317");
    published("jaeger", "16686");

    let executor = service("executor");
    assert_eq!(
        executor["deploy"]["replicas"].as_i64(),
        Some(3),
        "three executor replicas"
    );
    let handlers = env(executor, "TAREFA_HANDLERS").expect("executor routes to the Python handler");
    let (_, target) = handlers
        .split_once("=grpc://")
        .expect("a grpc handler route");
    let (host, port) = target.split_once(':').expect("host:port");
    assert!(names.contains(&host), "handler host {host} is a service");
    assert!(
        strings(&service(host)["expose"]).contains(&port.to_owned()),
        "{host} exposes {port}"
    );

    // Every URL's host is a service of the file.
    for name in ["scheduler", "executor"] {
        for var in ["TAREFA_REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
            let url = env(service(name), var).unwrap_or_else(|| panic!("{name} sets {var}"));
            let host = url
                .split("://")
                .nth(1)
                .and_then(|r| r.split(':').next())
                .unwrap_or("");
            assert!(
                names.contains(&host),
                "{name}'s {var} points at {host}, not a service"
            );
        }
    }

    // Only variables the binaries read (a typo would be silently ignored by them).
    let sources = [
        include_str!("../../../scheduler/src/config.rs"),
        include_str!("../../../executor/src/config.rs"),
        include_str!("../../../telemetry/src/lib.rs"),
    ]
    .concat();
    for (name, service) in services {
        let Some(vars) = service["environment"].as_hash() else {
            continue;
        };
        for var in vars.keys().filter_map(Yaml::as_str) {
            if var.starts_with("TAREFA_") {
                assert!(
                    sources.contains(&format!("\"{var}\"")),
                    "{name:?}: {var} is not a Tarefa setting"
                );
            }
        }
    }

    // What the services build from exists, and the image holds the binaries they run.
    assert!(workspace_root().join("Dockerfile").exists());
    let dockerfile =
        std::fs::read_to_string(workspace_root().join("Dockerfile")).expect("Dockerfile");
    for name in ["scheduler", "executor"] {
        let command = strings(&service(name)["command"]);
        let binary = command.first().expect("a command");
        assert!(
            dockerfile.contains(binary.as_str()),
            "the image builds {binary}"
        );
    }
    let python = &service("python-handler")["build"];
    let dockerfile = python["dockerfile"]
        .as_str()
        .expect("python-handler's dockerfile");
    assert!(
        workspace_root().join(dockerfile).exists(),
        "{dockerfile} exists"
    );
}
