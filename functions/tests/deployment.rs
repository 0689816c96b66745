//! Deployment hygiene, checked over the files that deploy the gateway and the worker (the
//! offline linters validate their syntax; these are our own rules).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap()
}

#[test]
fn every_function_has_reserved_concurrency() {
    let template: serde_yaml::Value = serde_yaml::from_str(&read("template.yaml")).unwrap();
    let mut functions = 0;
    for (name, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        functions += 1;
        assert!(
            !resource["Properties"]["ReservedConcurrentExecutions"].is_null(),
            "{name:?} has no ReservedConcurrentExecutions: one flood could take the account's whole concurrency"
        );
    }
    assert_eq!(functions, 3);
}

#[test]
fn worker_tasks_cannot_reach_the_instance_metadata() {
    let stack = read("infra/worker-stack.yaml");
    assert!(stack.contains("NetworkMode: awsvpc"));
    assert!(
        stack.contains("ECS_AWSVPC_BLOCK_IMDS=true"),
        "the ECS agent must block IMDS for awsvpc tasks"
    );
}

#[test]
fn the_runtime_user_cannot_change_the_models() {
    for dockerfile in ["infra/worker.Dockerfile", "infra/worker-cuda.Dockerfile"] {
        let text = read(dockerfile);
        let copy = text
            .lines()
            .find(|l| l.starts_with("COPY") && l.trim_end().ends_with(" /models"))
            .unwrap_or_else(|| panic!("{dockerfile} copies no models"));
        assert!(
            copy.contains("--chown=root:root") && copy.contains("--chmod=0555"),
            "{dockerfile}: {copy}"
        );
        assert!(
            text.contains("USER 10001"),
            "{dockerfile} must not run as root"
        );
    }
}
