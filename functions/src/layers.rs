//! The concerns every route shares, written once around each handler: the request id, the
//! tracing span, the route match (method and path against [`crate::router::ROUTES`], once),
//! problem rendering, the `Server-Timing` and `x-request-id` headers, and one metrics line
//! per request. A handler ([`Handler`]) holds only its own logic and reports into the
//! [`Context`] it is given.

use std::future::Future;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use inferencehub_proto::{ErrorKind, REQUEST_ID_METADATA, is_sane_request_id};
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;
use tracing::Instrument;

use crate::emf::RequestMetrics;
use crate::problem::Problem;
use crate::router::{Function, Matched, NoRoute, Operation};

/// One function's own logic; [`serve`] wraps it in the shared concerns.
pub trait Handler: Send + Sync {
    /// The function this handler is (its span, metrics and routes).
    const FUNCTION: Function;

    /// What the function does at one of its routes.
    type Op: Copy + Send + TryFrom<Operation, Error = Operation>;

    /// Answers a request routed to `op`. A problem is an answer too (4xx/5xx), rendered
    /// by the layer, never a function error.
    fn handle(
        &self,
        op: Self::Op,
        req: Request,
        route: &Matched,
        cx: &mut Context,
    ) -> impl Future<Output = Result<Response<Body>, Problem>> + Send;
}

/// What a handler tells the layer about its request.
#[derive(Debug)]
pub struct Context {
    request_id: String,
    timings: Vec<(&'static str, f64)>,
    headers: Vec<(HeaderName, String)>,
    /// The request's metrics line; the layer fills in function, status and latency.
    pub metrics: RequestMetrics,
}

impl Context {
    fn new(function: &'static str, request_id: String) -> Self {
        Self {
            metrics: RequestMetrics {
                function,
                request_id: request_id.clone(),
                ..Default::default()
            },
            request_id,
            timings: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// The request id (also in every log line of the request's span).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Runs `step` and records its duration as the `Server-Timing` entry `name`.
    pub async fn time<T>(&mut self, name: &'static str, step: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = step.await;
        self.timings
            .push((name, started.elapsed().as_secs_f64() * 1e3));
        out
    }

    /// A header for the answer, success or problem alike.
    pub fn header(&mut self, name: HeaderName, value: impl Into<String>) {
        self.headers.push((name, value.into()));
    }

    fn server_timing(&self) -> String {
        self.timings
            .iter()
            .map(|(n, ms)| format!("{n};dur={ms:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The request id: the caller's `x-request-id` if sane, else the Lambda request id, else
/// a new UUID.
pub fn request_id(req: &Request) -> String {
    if let Some(id) = req
        .headers()
        .get(REQUEST_ID_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|s| is_sane_request_id(s))
    {
        return id.to_string();
    }
    if let Some(ctx) = req.lambda_context_ref()
        && is_sane_request_id(&ctx.request_id)
    {
        return ctx.request_id.clone();
    }
    uuid::Uuid::new_v4().to_string()
}

/// A JSON answer.
pub fn json_response(status: u16, body: &impl Serialize) -> Response<Body> {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    let mut response = Response::new(Body::Text(text));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Answers `req` with `handler` inside the shared concerns.
pub async fn serve<H: Handler>(handler: &H, req: Request) -> Response<Body> {
    let request_id = request_id(&req);
    let span =
        tracing::info_span!("request", function = H::FUNCTION.name(), request_id = %request_id);
    async move {
        let started = Instant::now();
        let mut cx = Context::new(H::FUNCTION.name(), request_id);
        let result = match Matched::find(H::FUNCTION, &req) {
            Ok(route) => match H::Op::try_from(route.route.op) {
                Ok(op) => handler.handle(op, req, &route, &mut cx).await,
                Err(_) => Err(Problem::new(ErrorKind::NotFound, "no such route")),
            },
            Err(NoRoute::Method(allowed)) => Err(method_not_allowed(&allowed)),
            Err(NoRoute::NotFound) => Err(Problem::new(ErrorKind::NotFound, "no such route")),
        };
        let total = started.elapsed().as_secs_f64() * 1e3;
        cx.timings.push(("total", total));
        finish(result, cx, total)
    }
    .instrument(span)
    .await
}

/// The answer for a path no route serves, with the same headers and metrics line.
pub fn not_found(req: &Request) -> Response<Body> {
    let cx = Context::new("router", request_id(req));
    finish(
        Err(Problem::new(ErrorKind::NotFound, "no such route")),
        cx,
        0.0,
    )
}

fn method_not_allowed(allowed: &[&'static str]) -> Problem {
    let allow = allowed.join(", ");
    Problem::new(
        ErrorKind::MethodNotAllowed,
        format!("this route only accepts {allow}"),
    )
    .with_header(header::ALLOW, allow)
}

fn finish(
    result: Result<Response<Body>, Problem>,
    mut cx: Context,
    total_ms: f64,
) -> Response<Body> {
    let mut response = match result {
        Ok(response) => response,
        Err(problem) => problem.into_response(&cx.request_id),
    };
    let timing = cx.server_timing();
    if !timing.is_empty() {
        cx.headers
            .push((HeaderName::from_static("server-timing"), timing));
    }
    cx.headers.push((
        HeaderName::from_static(REQUEST_ID_METADATA),
        cx.request_id.clone(),
    ));
    for (name, value) in cx.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    cx.metrics.status = response.status().as_u16();
    cx.metrics.latency_ms = total_ms;
    cx.metrics.emit();
    response
}
