//! The HTTP API's routes, defined once: [`ROUTES`] maps each method and path to the Lambda
//! function that serves it. The shared layer checks methods against it, the local server
//! ([`App`]) dispatches by it, and a test holds `template.yaml`'s HTTP API events to it.
//! One handler per file, each holding only its own logic.

pub mod health;
pub mod models;
pub mod predict;

use lambda_http::{Body, Request, RequestExt, Response};

pub use health::Health;
pub use models::Models;
pub use predict::Predict;

use crate::auth::{AuthError, Authenticator, Caller};
use crate::layers;
use crate::problem::Problem;
use crate::ratelimit::RateLimiter;
use crate::worker::Worker;

/// The caller of an authenticated route, or its 401.
pub async fn caller(auth: &Authenticator, req: &Request) -> Result<Caller, Problem> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    auth.authenticate(header).await.map_err(|e| match e {
        AuthError::Missing => Problem::unauthorized("a bearer token is required", false),
        AuthError::Invalid(why) => Problem::unauthorized(why, true),
    })
}

/// 404 unless the path's `{version}`, when there is one, is the version `model` serves.
pub fn check_version(
    req: &Request,
    model: &inferencehub_proto::pb::ModelInfo,
) -> Result<(), Problem> {
    match path_param(req, "version") {
        Some(version) if version != model.version => Err(Problem::new(
            inferencehub_proto::ErrorKind::NotFound,
            format!(
                "model {:?} has no version {version:?}; it serves {:?}",
                model.name, model.version
            ),
        )),
        _ => Ok(()),
    }
}

/// The Lambda functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// `predict`: auth, validation, rate limit, worker call.
    Predict,
    /// `models`: the worker catalogue.
    Models,
    /// `health`: whether a worker is SERVING.
    Health,
}

impl Function {
    /// Every function.
    pub const ALL: [Function; 3] = [Function::Predict, Function::Models, Function::Health];

    /// The function's name: its binary (`src/bin/<name>.rs`), its `BuildProperties.Binary`
    /// in `template.yaml`, and its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Predict => "predict",
            Self::Models => "models",
            Self::Health => "health",
        }
    }
}

/// One route of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// HTTP method (a GET route answers HEAD too).
    pub method: &'static str,
    /// Path; `{name}` matches one non-empty segment.
    pub path: &'static str,
    /// The function behind it.
    pub function: Function,
}

/// Every route of the HTTP API.
pub const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: "/v1/predict",
        function: Function::Predict,
    },
    Route {
        method: "GET",
        path: "/v1/models",
        function: Function::Models,
    },
    Route {
        method: "GET",
        path: "/v1/models/{name}",
        function: Function::Models,
    },
    Route {
        method: "GET",
        path: "/healthz",
        function: Function::Health,
    },
    Route {
        method: "GET",
        path: "/openapi.json",
        function: Function::Models,
    },
    Route {
        method: "GET",
        path: "/docs",
        function: Function::Models,
    },
    Route {
        method: "GET",
        path: "/v2",
        function: Function::Models,
    },
    Route {
        method: "GET",
        path: "/v2/health/live",
        function: Function::Health,
    },
    Route {
        method: "GET",
        path: "/v2/health/ready",
        function: Function::Health,
    },
    Route {
        method: "GET",
        path: "/v2/models/{name}",
        function: Function::Models,
    },
    Route {
        method: "GET",
        path: "/v2/models/{name}/versions/{version}",
        function: Function::Models,
    },
    Route {
        method: "GET",
        path: "/v2/models/{name}/ready",
        function: Function::Models,
    },
    Route {
        method: "GET",
        path: "/v2/models/{name}/versions/{version}/ready",
        function: Function::Models,
    },
    Route {
        method: "POST",
        path: V2_INFER,
        function: Function::Predict,
    },
    Route {
        method: "POST",
        path: V2_INFER_VERSION,
        function: Function::Predict,
    },
];

/// Open Inference Protocol inference, latest version.
pub const V2_INFER: &str = "/v2/models/{name}/infer";
/// Open Inference Protocol inference, one version.
pub const V2_INFER_VERSION: &str = "/v2/models/{name}/versions/{version}/infer";

/// The route pattern `path` matches, if any (`/v2/models/{name}/ready` for
/// `/v2/models/iris/ready`).
pub fn pattern_of(path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|r| match_path(r.path, path).is_some())
        .map(|r| r.path)
}

/// The parameters `path` binds in `pattern`, or `None` when it does not match. A trailing
/// slash is ignored.
pub fn match_path(pattern: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let mut want = pattern.trim_end_matches('/').split('/');
    let mut got = path.trim_end_matches('/').split('/');
    let mut params = Vec::new();
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) => {
                if let Some(name) = w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                    if g.is_empty() {
                        return None;
                    }
                    params.push((name, g.to_string()));
                } else if w != g {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// The function whose route `path` matches.
pub fn function_for(path: &str) -> Option<Function> {
    ROUTES
        .iter()
        .find(|r| match_path(r.path, path).is_some())
        .map(|r| r.function)
}

/// The methods `function` accepts at `path`. A Lambda function may be invoked under a path
/// of the API Gateway's choosing (a stage prefix, `cargo lambda`'s URL): then every method
/// of its routes counts.
pub fn methods_for(function: Function, path: &str) -> Vec<&'static str> {
    let own = ROUTES.iter().filter(|r| r.function == function);
    let matching: Vec<_> = own
        .clone()
        .filter(|r| match_path(r.path, path).is_some())
        .map(|r| r.method)
        .collect();
    let mut methods = if matching.is_empty() {
        own.map(|r| r.method).collect()
    } else {
        matching
    };
    methods.sort_unstable();
    methods.dedup();
    methods
}

/// Whether `method` is among `allowed` (HEAD is allowed wherever GET is).
pub fn method_allowed(allowed: &[&str], method: &http::Method) -> bool {
    allowed.contains(&method.as_str()) || (method == http::Method::HEAD && allowed.contains(&"GET"))
}

/// The path parameter `name`: from API Gateway's path parameters, else by matching the
/// path against the route table.
pub fn path_param(req: &Request, name: &str) -> Option<String> {
    if let Some(value) = req
        .path_parameters_ref()
        .and_then(|p| p.first(name))
        .filter(|v| !v.is_empty())
    {
        return Some(value.to_string());
    }
    ROUTES
        .iter()
        .filter_map(|r| match_path(r.path, req.uri().path()))
        .flatten()
        .find(|(param, _)| *param == name)
        .map(|(_, value)| value)
}

/// All three functions behind one router: what API Gateway does in AWS, done in-process
/// for the local server and tests.
pub struct App<L, W> {
    /// `POST /v1/predict`.
    pub predict: Predict<L, W>,
    /// `GET /v1/models[/{name}]`.
    pub models: Models<W>,
    /// `GET /healthz`.
    pub health: Health<W>,
}

impl<L: RateLimiter, W: Worker> App<L, W> {
    /// Routes by the table, like the HTTP API does.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        match function_for(req.uri().path()) {
            Some(Function::Predict) => layers::serve(&self.predict, req).await,
            Some(Function::Models) => layers::serve(&self.models, req).await,
            Some(Function::Health) => layers::serve(&self.health, req).await,
            None => layers::not_found(&req),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_with_parameters() {
        assert_eq!(match_path("/v1/predict", "/v1/predict/"), Some(vec![]));
        assert_eq!(
            match_path("/v1/models/{name}", "/v1/models/iris"),
            Some(vec![("name", "iris".to_string())])
        );
        assert_eq!(match_path("/v1/models/{name}", "/v1/models/"), None);
        assert_eq!(match_path("/v1/models", "/v1/models/iris"), None);
        assert_eq!(function_for("/v1/models/iris"), Some(Function::Models));
        assert_eq!(function_for("/nope"), None);
    }

    #[test]
    fn methods_come_from_the_table() {
        assert_eq!(methods_for(Function::Predict, "/v1/predict"), ["POST"]);
        // Invoked under a path of the platform's choosing: the function's own methods.
        assert_eq!(methods_for(Function::Health, "/"), ["GET"]);
        assert!(method_allowed(&["GET"], &http::Method::HEAD));
        assert!(!method_allowed(&["POST"], &http::Method::GET));
    }

    /// The deployed JWKS URL must be https, as the functions require at start-up.
    #[test]
    fn the_template_accepts_only_an_https_jwks_url() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        let template: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let pattern = template["Parameters"]["JwksUrl"]["AllowedPattern"]
            .as_str()
            .unwrap_or_default();
        assert!(
            pattern.starts_with("^https://"),
            "JwksUrl pattern {pattern:?}"
        );
    }

    /// `template.yaml`'s HTTP API events are exactly the route table, function by function.
    #[test]
    fn the_route_table_is_the_templates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let template: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let mut deployed = Vec::new();
        for (_, resource) in template["Resources"].as_mapping().unwrap() {
            if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
                continue;
            }
            let binary = resource["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .unwrap();
            let function = Function::ALL
                .into_iter()
                .find(|f| f.name() == binary)
                .unwrap_or_else(|| panic!("template deploys unknown function {binary}"));
            for (_, event) in resource["Properties"]["Events"].as_mapping().unwrap() {
                if event["Type"].as_str() != Some("HttpApi") {
                    continue;
                }
                let props = &event["Properties"];
                deployed.push((
                    props["Method"].as_str().unwrap().to_uppercase(),
                    props["Path"].as_str().unwrap().to_string(),
                    function,
                ));
            }
        }
        let mut table: Vec<_> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string(), r.function))
            .collect();
        deployed.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        table.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        assert_eq!(deployed, table);
        // And every function has its binary.
        for function in Function::ALL {
            let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("src/bin/{}.rs", function.name()));
            assert!(bin.is_file(), "{} missing", bin.display());
        }
    }
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod handler_tests;
