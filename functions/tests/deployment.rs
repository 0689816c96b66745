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

/// Each worker image carries ONNX Runtime from the wheel `make onnxruntime` fetches (the
/// GPU image its `onnxruntime-gpu` build) and points the worker at it; the local runs and
/// the worker's default name the same release.
#[test]
fn the_worker_images_carry_the_pinned_onnxruntime() {
    let makefile = read("Makefile");
    let version = makefile
        .lines()
        .find_map(|l| l.strip_prefix("ORT_VERSION := "))
        .expect("the Makefile pins ORT_VERSION")
        .trim();
    for (dockerfile, package) in [
        ("infra/worker.Dockerfile", "onnxruntime"),
        ("infra/worker-cuda.Dockerfile", "onnxruntime-gpu"),
    ] {
        let text = read(dockerfile);
        let fetch = format!("fetch_onnxruntime.py {package} {version} /onnxruntime");
        assert!(text.contains(&fetch), "{dockerfile} does not run {fetch}");
        assert!(
            text.contains("COPY --from=onnxruntime /onnxruntime /usr/local/lib/onnxruntime"),
            "{dockerfile}"
        );
        let env = format!(
            "IHUB_WORKER_ONNXRUNTIME=/usr/local/lib/onnxruntime/libonnxruntime.so.{version}"
        );
        assert!(text.contains(&env), "{dockerfile} does not set {env}");
    }
    // Where the local runs look for it, and the worker's default, name the same release.
    let library = format!("libonnxruntime.so.{version}");
    for file in [
        ".cargo/config.toml",
        "scripts/dev.sh",
        "gpu-worker/src/models/onnx/runtime.rs",
    ] {
        assert!(
            read(file).contains(&library),
            "{file} does not name {library}"
        );
    }
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

/// The name in `!Ref Name` (or `{"Ref": "Name"}`).
fn reference(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::Tagged(tagged) if tagged.tag == "!Ref" => {
            tagged.value.as_str().map(str::to_string)
        }
        serde_yaml::Value::Mapping(map) => map.get("Ref")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(path)).unwrap()
}

#[test]
fn no_function_configuration_holds_the_worker_client_key() {
    let text = read("template.yaml");
    assert!(
        !text.contains("resolve:secretsmanager"),
        "a dynamic reference puts the secret into the function's configuration"
    );
    let template = yaml("template.yaml");
    let globals = &template["Globals"]["Function"]["Environment"]["Variables"];
    for var in [
        "IHUB_GATEWAY_WORKER_TLS_KEY",
        "IHUB_GATEWAY_WORKER_TLS_CERT",
        "IHUB_GATEWAY_WORKER_TLS_CA",
    ] {
        assert!(globals[var].is_null(), "Globals set {var}");
    }
    let mut secrets = std::collections::BTreeMap::new();
    for name in ["PredictFunction", "ModelsFunction", "HealthFunction"] {
        let props = &template["Resources"][name]["Properties"];
        let vars = &props["Environment"]["Variables"];
        for var in [
            "IHUB_GATEWAY_WORKER_TLS_KEY",
            "IHUB_GATEWAY_WORKER_TLS_CERT",
        ] {
            assert!(vars[var].is_null(), "{name} sets {var}");
        }
        let secret = reference(&vars["IHUB_GATEWAY_WORKER_TLS_SECRET_ID"])
            .unwrap_or_else(|| panic!("{name} reads no secret"));
        // The role may read that secret and no other.
        let readable: Vec<String> = props["Policies"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|p| p["Statement"].as_sequence().cloned().unwrap_or_default())
            .filter(|s| s["Action"].as_str() == Some("secretsmanager:GetSecretValue"))
            .map(|s| reference(&s["Resource"]).expect("one secret, by reference"))
            .collect();
        assert_eq!(readable, std::slice::from_ref(&secret), "{name}");
        secrets.insert(name, secret);
    }
    // Each function holds its own identity: the models function may only list models and
    // the health function only check health (the workers' --tls-catalog-names and
    // --tls-health-names), so neither holds a key that predicts.
    let distinct: std::collections::BTreeSet<&String> = secrets.values().collect();
    assert_eq!(distinct.len(), 3, "{secrets:?}");
}

#[test]
fn security_groups_chain_functions_to_the_balancer_to_the_workers() {
    let stack = yaml("infra/worker-stack.yaml");
    let resources = &stack["Resources"];
    let ingress = |group: &str| -> Vec<serde_yaml::Value> {
        resources[group]["Properties"]["SecurityGroupIngress"]
            .as_sequence()
            .unwrap()
            .clone()
    };
    for rule in ingress("WorkerSecurityGroup") {
        assert!(
            rule["CidrIp"].is_null(),
            "a CIDR rule on the workers: {rule:?}"
        );
        assert_eq!(
            reference(&rule["SourceSecurityGroupId"]).as_deref(),
            Some("LoadBalancerSecurityGroup"),
            "{rule:?}"
        );
    }
    for rule in ingress("LoadBalancerSecurityGroup") {
        assert!(rule["CidrIp"].is_null(), "{rule:?}");
        assert_eq!(
            reference(&rule["SourceSecurityGroupId"]).as_deref(),
            Some("GatewaySecurityGroupId"),
            "{rule:?}"
        );
    }
    let balancer_groups: Vec<_> = resources["LoadBalancer"]["Properties"]["SecurityGroups"]
        .as_sequence()
        .expect("the load balancer has security groups")
        .iter()
        .filter_map(reference)
        .collect();
    assert_eq!(balancer_groups, ["LoadBalancerSecurityGroup"]);

    // The workers check client certificate names.
    let env = resources["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
        .as_sequence()
        .unwrap();
    for var in [
        "IHUB_WORKER_TLS_CLIENT_NAMES",
        "IHUB_WORKER_TLS_HEALTH_NAMES",
        "IHUB_WORKER_TLS_CATALOG_NAMES",
    ] {
        assert!(
            env.iter().any(|e| e["Name"].as_str() == Some(var)),
            "the task does not set {var}"
        );
    }
}

#[test]
fn the_images_keep_metrics_on_loopback() {
    for dockerfile in ["infra/worker.Dockerfile", "infra/worker-cuda.Dockerfile"] {
        let text = read(dockerfile);
        assert!(
            text.contains("IHUB_WORKER_METRICS_LISTEN=127.0.0.1:"),
            "{dockerfile} serves /metrics beyond loopback"
        );
        assert!(!text.contains("EXPOSE 50051 9464"), "{dockerfile}");
    }
}

/// Every function's log group and the API's access log are kept for a bounded time, and the
/// access log's format names no header (a bearer token never reaches the logs).
#[test]
fn logs_are_retained_for_a_bounded_time_and_carry_no_token() {
    let template = yaml("template.yaml");
    let resources = template["Resources"].as_mapping().unwrap();
    let functions: Vec<String> = resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(name, _)| name.as_str().unwrap().to_string())
        .collect();
    assert_eq!(functions.len(), 3);
    let groups: Vec<&serde_yaml::Value> = resources
        .values()
        .filter(|r| r["Type"].as_str() == Some("AWS::Logs::LogGroup"))
        .collect();
    for function in &functions {
        let group = groups
            .iter()
            .find(|g| {
                serde_yaml::to_string(&g["Properties"]["LogGroupName"])
                    .unwrap()
                    .contains(&format!("${{{function}}}"))
            })
            .unwrap_or_else(|| panic!("{function} has no log group of its own"));
        assert!(
            !group["Properties"]["RetentionInDays"].is_null(),
            "{function}'s logs are kept forever"
        );
    }
    let api = &template["Resources"]["HttpApi"]["Properties"]["AccessLogSettings"];
    let format = api["Format"].as_str().expect("the API has an access log");
    assert!(format.contains("$context.requestId") && format.contains("$context.status"));
    let lower = format.to_ascii_lowercase();
    for leak in ["header", "authorization", "authorizer", "token"] {
        assert!(
            !lower.contains(leak),
            "the access log would carry {leak}: {format}"
        );
    }
    let destination = match &api["DestinationArn"] {
        serde_yaml::Value::Tagged(t) if t.tag == "!GetAtt" => t
            .value
            .as_str()
            .and_then(|v| v.split('.').next())
            .unwrap()
            .to_string(),
        other => panic!("the access log goes to {other:?}, not a log group of the template"),
    };
    assert!(
        !resources[destination.as_str()]["Properties"]["RetentionInDays"].is_null(),
        "the access log is kept forever"
    );
}

/// The arguments of `!Tag [...]` (or `{"Fn::Tag": [...]}`).
fn call<'a>(value: &'a serde_yaml::Value, tag: &str) -> Option<&'a Vec<serde_yaml::Value>> {
    match value {
        serde_yaml::Value::Tagged(t) if t.tag == format!("!{tag}") => t.value.as_sequence(),
        serde_yaml::Value::Mapping(m) => m.get(format!("Fn::{tag}"))?.as_sequence(),
        _ => None,
    }
}

/// The value a condition's `!If` gives when the condition holds, checking that it is
/// `!If [condition, value, !Ref AWS::NoValue]`.
fn when<'a>(value: &'a serde_yaml::Value, condition: &str) -> &'a serde_yaml::Value {
    let args = call(value, "If").unwrap_or_else(|| panic!("not an !If: {value:?}"));
    assert_eq!(args[0].as_str(), Some(condition));
    assert_eq!(reference(&args[2]).as_deref(), Some("AWS::NoValue"));
    &args[1]
}

/// A request without a valid token stops at the HTTP API's JWT authorizer (on by
/// default, from the same issuer and audience as the functions), so a flood of them runs no
/// function; a parameter turns it off for issuers without OpenID discovery. SAM takes no
/// intrinsic in `Auth`, so LanguageExtensions must resolve the `!If` first.
#[test]
fn anonymous_requests_stop_at_the_api_before_any_function() {
    let template = yaml("template.yaml");
    let transforms: Vec<&str> = template["Transform"]
        .as_sequence()
        .expect("a list of transforms")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        transforms,
        ["AWS::LanguageExtensions", "AWS::Serverless-2016-10-31"]
    );
    let switch = &template["Parameters"]["ApiJwtAuthorizer"];
    assert_eq!(switch["Default"].as_str(), Some("true"), "on by default");
    let condition = call(&template["Conditions"]["UseJwtAuthorizer"], "Equals").unwrap();
    assert_eq!(
        reference(&condition[0]).as_deref(),
        Some("ApiJwtAuthorizer")
    );
    assert_eq!(condition[1].as_str(), Some("true"));

    let auth = when(
        &template["Resources"]["HttpApi"]["Properties"]["Auth"],
        "UseJwtAuthorizer",
    );
    let name = auth["DefaultAuthorizer"]
        .as_str()
        .expect("a default authorizer");
    let authorizer = &auth["Authorizers"][name];
    assert_eq!(
        authorizer["IdentitySource"].as_str(),
        Some("$request.header.Authorization")
    );
    let jwt = &authorizer["JwtConfiguration"];
    assert_eq!(reference(&jwt["issuer"]).as_deref(), Some("JwtIssuer"));
    let audiences: Vec<Option<String>> = jwt["audience"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(reference)
        .collect();
    assert_eq!(audiences, [Some("JwtAudience".to_string())]);
    // The functions' own checks stay: each function that reads tokens is told the same.
    for function in ["PredictFunction", "ModelsFunction"] {
        let vars = &template["Resources"][function]["Properties"]["Environment"]["Variables"];
        assert_eq!(
            reference(&vars["IHUB_GATEWAY_JWT_ISSUER"]).as_deref(),
            Some("JwtIssuer")
        );
        assert_eq!(
            reference(&vars["IHUB_GATEWAY_JWT_AUDIENCE"]).as_deref(),
            Some("JwtAudience")
        );
    }
    // Which routes stay open is held to the route table by the router's own test.
}

/// The token kinds the functions require are parameters with safe defaults: Cognito's
/// access tokens only (`token_use: access`, so the pool's ID tokens are refused), and `typ`
/// when the issuer sets one.
#[test]
fn token_kinds_are_stack_parameters_with_safe_defaults() {
    let template = yaml("template.yaml");
    let params = &template["Parameters"];
    assert_eq!(
        params["JwtRequiredTokenUse"]["Default"].as_str(),
        Some("access")
    );
    assert!(params["JwtRequiredTyp"]["Default"].as_str().is_some());
    let globals = &template["Globals"]["Function"]["Environment"]["Variables"];
    assert_eq!(
        reference(&globals["IHUB_GATEWAY_JWT_REQUIRED_TOKEN_USE"]).as_deref(),
        Some("JwtRequiredTokenUse")
    );
    assert_eq!(
        reference(&globals["IHUB_GATEWAY_JWT_REQUIRED_TYP"]).as_deref(),
        Some("JwtRequiredTyp")
    );
}

/// An optional edge: with `EdgeRateLimit` set, CloudFront in front of the API with an AWS
/// WAF rule that blocks a client IP past that many requests in 5 minutes (429), forwarding
/// the token and caching nothing; without it, no edge resource exists.
#[test]
fn an_edge_with_a_per_client_ip_rate_rule_is_a_stack_parameter() {
    let template = yaml("template.yaml");
    let limit = &template["Parameters"]["EdgeRateLimit"];
    assert_eq!(limit["Default"].as_u64(), Some(0), "off by default");
    let resources = template["Resources"].as_mapping().unwrap();
    let of_type = |kind: &str| -> Vec<&serde_yaml::Value> {
        resources
            .values()
            .filter(|r| r["Type"].as_str() == Some(kind))
            .collect()
    };
    for kind in [
        "AWS::WAFv2::WebACL",
        "AWS::CloudFront::Distribution",
        "AWS::CloudFront::CachePolicy",
    ] {
        let found = of_type(kind);
        assert_eq!(found.len(), 1, "{kind}");
        assert_eq!(found[0]["Condition"].as_str(), Some("UseEdge"), "{kind}");
    }
    let equals = call(&template["Conditions"]["UseEdge"], "Not").unwrap();
    let equals = call(&equals[0], "Equals").unwrap();
    assert_eq!(reference(&equals[0]).as_deref(), Some("EdgeRateLimit"));

    let acl = &of_type("AWS::WAFv2::WebACL")[0]["Properties"];
    assert_eq!(acl["Scope"].as_str(), Some("CLOUDFRONT"));
    let rules = acl["Rules"].as_sequence().unwrap();
    let rule = rules
        .iter()
        .find(|r| !r["Statement"]["RateBasedStatement"].is_null())
        .expect("a rate-based rule");
    let rate = &rule["Statement"]["RateBasedStatement"];
    assert_eq!(rate["AggregateKeyType"].as_str(), Some("IP"));
    assert_eq!(reference(&rate["Limit"]).as_deref(), Some("EdgeRateLimit"));
    assert_eq!(
        rule["Action"]["Block"]["CustomResponse"]["ResponseCode"].as_u64(),
        Some(429)
    );

    let distribution = &of_type("AWS::CloudFront::Distribution")[0]["Properties"];
    let config = &distribution["DistributionConfig"];
    let acl_name = resources
        .iter()
        .find(|(_, r)| r["Type"].as_str() == Some("AWS::WAFv2::WebACL"))
        .map(|(n, _)| n.as_str().unwrap())
        .unwrap();
    assert_eq!(
        serde_yaml::to_string(&config["WebACLId"]).unwrap().trim(),
        format!("!GetAtt {acl_name}.Arn")
    );
    let origins = config["Origins"].as_sequence().unwrap();
    assert_eq!(origins.len(), 1);
    assert!(
        serde_yaml::to_string(&origins[0]["DomainName"])
            .unwrap()
            .contains("${HttpApi}.execute-api"),
        "the edge's origin is this API"
    );
    assert_eq!(
        origins[0]["CustomOriginConfig"]["OriginProtocolPolicy"].as_str(),
        Some("https-only")
    );
    let cache = &of_type("AWS::CloudFront::CachePolicy")[0]["Properties"]["CachePolicyConfig"];
    assert_eq!(cache["DefaultTTL"].as_u64(), Some(0));
    let headers = &cache["ParametersInCacheKeyAndForwardedToOrigin"]["HeadersConfig"];
    assert!(
        headers["Headers"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|h| h.as_str() == Some("Authorization")),
        "the token must reach the API"
    );
    // A CloudFront WAF exists only in us-east-1: the stack says so before creating anything.
    let rule = &template["Rules"]["EdgeInUsEast1"];
    let region = call(&rule["Assertions"][0]["Assert"], "Equals").unwrap();
    assert_eq!(reference(&region[0]).as_deref(), Some("AWS::Region"));
    assert_eq!(region[1].as_str(), Some("us-east-1"));
}
