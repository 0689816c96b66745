//! The HTTP API's routes, defined once: [`ROUTES`] binds each method and path to one
//! operation of one Lambda function. The shared layer matches a request here once and
//! hands the handler its operation and path parameters; the local server dispatches by it,
//! the OpenAPI document is held to it, and a test holds `template.yaml`'s HTTP API events
//! to it.

use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};

/// The Lambda functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// `predict`: auth, validation, rate limit, worker call.
    Predict,
    /// `models`: the worker catalogue and the API's own description.
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

/// What the `predict` function does at a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictOp {
    /// `POST /v1/predict`: InferenceHub's own JSON.
    V1,
    /// `POST /v2/models/{name}[/versions/{version}]/infer`: the Open Inference Protocol.
    V2,
    /// `POST /v1/embeddings`: OpenAI's embeddings API.
    Embeddings,
}

/// What the `models` function does at a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelsOp {
    /// `GET /v1/models`.
    List,
    /// `GET /v1/models/{name}`.
    Get,
    /// `GET /v2`: server metadata.
    V2Server,
    /// `GET /v2/models/{name}[/versions/{version}]`: model metadata.
    V2Model,
    /// `GET /v2/models/{name}[/versions/{version}]/ready`.
    V2ModelReady,
    /// `GET /openapi.json`.
    OpenApi,
    /// `GET /docs`.
    Docs,
}

/// What the `health` function does at a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthOp {
    /// `GET /healthz`.
    Healthz,
    /// `GET /v2/health/live`.
    V2Live,
    /// `GET /v2/health/ready`.
    V2Ready,
}

/// One operation of one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Served by `predict`.
    Predict(PredictOp),
    /// Served by `models`.
    Models(ModelsOp),
    /// Served by `health`.
    Health(HealthOp),
}

impl Operation {
    /// The function that serves it.
    pub fn function(self) -> Function {
        match self {
            Self::Predict(_) => Function::Predict,
            Self::Models(_) => Function::Models,
            Self::Health(_) => Function::Health,
        }
    }

    /// Whether the route needs a bearer token: all do but the health checks and the API's
    /// own description. The deployed API's JWT authorizer guards exactly these
    /// (`template.yaml`), and the functions check the token again.
    pub fn needs_token(self) -> bool {
        !matches!(
            self,
            Self::Health(_) | Self::Models(ModelsOp::OpenApi | ModelsOp::Docs)
        )
    }
}

/// Each function's own operations, out of an [`Operation`] (the other functions' are errors).
macro_rules! operations_of {
    ($($function:ident => $op:ty),* $(,)?) => {
        $(impl TryFrom<Operation> for $op {
            type Error = Operation;
            fn try_from(op: Operation) -> Result<Self, Operation> {
                match op {
                    Operation::$function(op) => Ok(op),
                    other => Err(other),
                }
            }
        })*
    };
}

operations_of!(Predict => PredictOp, Models => ModelsOp, Health => HealthOp);

/// One route of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// HTTP method (a GET route answers HEAD too).
    pub method: &'static str,
    /// Path; `{name}` matches one non-empty segment.
    pub path: &'static str,
    /// What it does.
    pub op: Operation,
}

const fn route(method: &'static str, path: &'static str, op: Operation) -> Route {
    Route { method, path, op }
}

use HealthOp as H;
use ModelsOp as M;
use Operation::{Health, Models, Predict};
use PredictOp as P;

/// Every route of the HTTP API. Each function's first route is the one it serves when
/// invoked under a path of the platform's choosing (see [`Matched::find`]).
pub const ROUTES: &[Route] = &[
    route("POST", "/v1/predict", Predict(P::V1)),
    route("POST", "/v2/models/{name}/infer", Predict(P::V2)),
    route("POST", "/v1/embeddings", Predict(P::Embeddings)),
    route(
        "POST",
        "/v2/models/{name}/versions/{version}/infer",
        Predict(P::V2),
    ),
    route("GET", "/v1/models", Models(M::List)),
    route("GET", "/v1/models/{name}", Models(M::Get)),
    route("GET", "/v2", Models(M::V2Server)),
    route("GET", "/v2/models/{name}", Models(M::V2Model)),
    route(
        "GET",
        "/v2/models/{name}/versions/{version}",
        Models(M::V2Model),
    ),
    route("GET", "/v2/models/{name}/ready", Models(M::V2ModelReady)),
    route(
        "GET",
        "/v2/models/{name}/versions/{version}/ready",
        Models(M::V2ModelReady),
    ),
    route("GET", "/openapi.json", Models(M::OpenApi)),
    route("GET", "/docs", Models(M::Docs)),
    route("GET", "/healthz", Health(H::Healthz)),
    route("GET", "/v2/health/live", Health(H::V2Live)),
    route("GET", "/v2/health/ready", Health(H::V2Ready)),
];

/// A request's route and the parameters its path binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The route.
    pub route: &'static Route,
    /// `{name}` and `{version}` as the path gave them.
    pub params: Vec<(&'static str, String)>,
}

/// Why a request has no route of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No route serves the path.
    NotFound,
    /// Routes serve the path, with these methods only.
    Method(Vec<&'static str>),
}

impl Matched {
    /// A path parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The route of `function` that serves `req`: the one API Gateway names in the
    /// request's route key when there is one, else the one whose path matches. A function
    /// invoked under a path of the platform's choosing (a stage prefix, `cargo lambda`'s
    /// URL) that none of its routes matches serves its first route.
    pub fn find(function: Function, req: &Request) -> Result<Matched, NoRoute> {
        let own = ROUTES.iter().filter(|r| r.op.function() == function);
        let by_key = route_key(req).and_then(|(method, path)| {
            own.clone()
                .find(|r| r.method == method && r.path == path)
                .map(|r| (r, gateway_params(req, r.path)))
        });
        if let Some((route, params)) = by_key {
            return Ok(Matched { route, params });
        }
        let path = req.uri().path();
        let matching: Vec<_> = own
            .clone()
            .filter_map(|r| match_path(r.path, path).map(|params| (r, params)))
            .collect();
        let candidates = if matching.is_empty() {
            own.take(1).map(|r| (r, Vec::new())).collect()
        } else {
            matching
        };
        if candidates.is_empty() {
            return Err(NoRoute::NotFound);
        }
        let method = req.method();
        let allowed = |r: &Route| {
            r.method == method.as_str() || (method == http::Method::HEAD && r.method == "GET")
        };
        if let Some((route, params)) = candidates.iter().find(|(r, _)| allowed(r)) {
            return Ok(Matched {
                route,
                params: params.clone(),
            });
        }
        let mut methods: Vec<_> = candidates.iter().map(|(r, _)| r.method).collect();
        methods.sort_unstable();
        methods.dedup();
        Err(NoRoute::Method(methods))
    }
}

/// API Gateway's route key (`POST /v1/predict`), split.
fn route_key(req: &Request) -> Option<(&str, &str)> {
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.route_key.as_deref()?.split_once(' '),
        _ => None,
    }
}

/// The parameters API Gateway bound for a route of `pattern`.
fn gateway_params(req: &Request, pattern: &'static str) -> Vec<(&'static str, String)> {
    let Some(given) = req.path_parameters_ref() else {
        return Vec::new();
    };
    pattern
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .filter_map(|name| Some((name, given.first(name)?.to_string())))
        .collect()
}

/// The function whose route `path` matches.
pub fn function_for(path: &str) -> Option<Function> {
    ROUTES
        .iter()
        .find(|r| match_path(r.path, path).is_some())
        .map(|r| r.op.function())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str) -> Request {
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(lambda_http::Body::Empty)
            .unwrap()
    }

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
    fn a_request_finds_its_operation_once() {
        let m = Matched::find(
            Function::Predict,
            &request("POST", "/v2/models/iris/versions/3/infer"),
        )
        .unwrap();
        assert_eq!(m.route.op, Operation::Predict(PredictOp::V2));
        assert_eq!(
            (m.param("name"), m.param("version")),
            (Some("iris"), Some("3"))
        );
        let m = Matched::find(Function::Models, &request("HEAD", "/v2/models/iris/ready")).unwrap();
        assert_eq!(m.route.op, Operation::Models(ModelsOp::V2ModelReady));
        // Invoked under a path of the platform's choosing: the function's first route.
        let m = Matched::find(Function::Health, &request("GET", "/")).unwrap();
        assert_eq!(m.route.op, Operation::Health(HealthOp::Healthz));
        assert_eq!(
            Matched::find(Function::Predict, &request("GET", "/v1/predict")),
            Err(NoRoute::Method(vec!["POST"]))
        );
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

    /// Whether an event's `Auth` is `!If [UseJwtAuthorizer, {Authorizer: NONE}, !Ref
    /// AWS::NoValue]`: open while the API's authorizer is on (and without one).
    fn opens_when_the_authorizer_is_on(auth: &serde_yaml::Value) -> bool {
        let serde_yaml::Value::Tagged(tagged) = auth else {
            assert!(auth.is_null(), "an event's Auth must be the !If: {auth:?}");
            return false;
        };
        assert_eq!(tagged.tag, "!If");
        let args = tagged.value.as_sequence().unwrap();
        assert_eq!(args[0].as_str(), Some("UseJwtAuthorizer"));
        assert_eq!(
            serde_yaml::to_string(&args[2]).unwrap().trim(),
            "!Ref AWS::NoValue"
        );
        args[1]["Authorizer"].as_str() == Some("NONE")
    }

    /// `template.yaml`'s HTTP API events are exactly the route table, function by function,
    /// and the API's authorizer guards exactly the routes that need a token: the others'
    /// events say `Authorizer: NONE` while the authorizer is on.
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
                    !opens_when_the_authorizer_is_on(&props["Auth"]),
                ));
            }
        }
        let mut table: Vec<_> = ROUTES
            .iter()
            .map(|r| {
                (
                    r.method.to_string(),
                    r.path.to_string(),
                    r.op.function(),
                    r.op.needs_token(),
                )
            })
            .collect();
        deployed.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        table.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        assert_eq!(deployed, table);
        assert!(table.iter().any(|r| r.3) && table.iter().any(|r| !r.3));
        // And every function has its binary.
        for function in Function::ALL {
            let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("src/bin/{}.rs", function.name()));
            assert!(bin.is_file(), "{} missing", bin.display());
        }
    }
}
