//! The `models` function: the worker catalogue for any valid token (`model:<name>` scopes
//! hide the other models), in `/v1` and Open Inference Protocol terms, and the API's own
//! description (`/openapi.json`, `/docs`, no token).

use std::sync::Arc;

use http::header::{self, HeaderValue};
use inferencehub_proto::ErrorKind;
use inferencehub_proto::pb::ModelInfo;
use lambda_http::{Body, Request, Response};

use crate::auth::{Authenticator, authorization};
use crate::catalog::{Catalog, Missing, is_default, is_ready, resolve, versions_of};
use crate::config::ModelsConfig;
use crate::layers::{Context, Handler, json_response};
use crate::pools::Pools;
use crate::problem::Problem;
use crate::protocol::v1::{ModelList, ModelView, UnavailableVersion, V1};
use crate::protocol::v2::{ModelMetadata, ModelReady, ServerMetadata};
use crate::router::{Function, Matched, ModelsOp};
use crate::worker::Worker;

/// The catalogue handler over a worker client.
pub struct Models<W> {
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// Worker client.
    pub worker: W,
    /// Cached catalogue.
    pub catalog: Catalog,
}

impl Models<Pools> {
    /// From its settings, connected: the cold-start path.
    pub async fn connect(config: ModelsConfig) -> anyhow::Result<Self> {
        Ok(Self {
            auth: Arc::new(Authenticator::new(config.auth).await?),
            worker: Pools::connect(config.worker).await?,
            catalog: Catalog::new(config.api.catalog_ttl),
        })
    }
}

/// `GET /docs`: the API page, built in the browser from `/openapi.json`.
const DOCS_PAGE: &str = include_str!("../docs.html");

/// The SHA-256 (CSP source form) of the text between `open` and `close` in `page`.
fn inline_hash(page: &str, open: &str, close: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let body = page
        .split_once(open)
        .and_then(|(_, rest)| rest.split_once(close))
        .map_or("", |(body, _)| body);
    let digest = sha2::Sha256::digest(body.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The docs page's Content-Security-Policy: its own one script and one style block only (by
/// their SHA-256, no `unsafe-inline`), calls to this API only, never framed, no `<base>`.
fn docs_csp() -> &'static str {
    static CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            inline_hash(DOCS_PAGE, "<script>", "</script>"),
            inline_hash(DOCS_PAGE, "<style>", "</style>"),
        )
    });
    &CSP
}

fn with_type(mut response: Response<Body>, content_type: &'static str) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

impl<W: Worker> Models<W> {
    /// The models the caller may see, and the one `route` names if it names one.
    async fn visible(
        &self,
        req: &Request,
        route: &Matched,
        cx: &mut Context,
    ) -> Result<(Vec<ModelInfo>, Option<ModelInfo>), Problem> {
        let caller = cx
            .time("auth", self.auth.authenticate(authorization(req)))
            .await?;
        let models = cx
            .time("worker", self.catalog.models(&self.worker))
            .await
            .map_err(|e| Problem::from_worker(&e, &V1::default()))?;
        let visible: Vec<ModelInfo> = models
            .iter()
            .filter(|m| caller.may_use_model(&m.name))
            .cloned()
            .collect();
        let Some(name) = route.param("name") else {
            return Ok((visible, None));
        };
        let model = match resolve(&visible, name, route.param("version")) {
            Ok(model) => model.clone(),
            Err(Missing::Model) => {
                return Err(Problem::new(
                    ErrorKind::NotFound,
                    format!("no model named {name:?}"),
                ));
            }
            Err(Missing::Version(served)) => {
                return Err(Problem::new(
                    ErrorKind::NotFound,
                    format!(
                        "model {name:?} has no version {:?}; it serves {}",
                        route
                            .param("version")
                            .unwrap_or_default()
                            .chars()
                            .take(64)
                            .collect::<String>(),
                        served.join(", ")
                    ),
                ));
            }
        };
        Ok((visible, Some(model)))
    }
}

impl<W: Worker> Handler for Models<W> {
    const FUNCTION: Function = Function::Models;
    type Op = ModelsOp;

    async fn handle(
        &self,
        op: ModelsOp,
        req: Request,
        route: &Matched,
        cx: &mut Context,
    ) -> Result<Response<Body>, Problem> {
        let mut response = match op {
            // The API's description is public, like the routes it describes.
            ModelsOp::OpenApi => {
                return Ok(with_type(
                    Response::new(Body::Text(crate::openapi::document())),
                    "application/json",
                ));
            }
            ModelsOp::Docs => {
                let mut response = with_type(
                    Response::new(Body::Text(DOCS_PAGE.into())),
                    "text/html; charset=utf-8",
                );
                // The page loads nothing from anywhere but this API.
                response.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(docs_csp()),
                );
                return Ok(response);
            }
            ModelsOp::V2Server => {
                cx.time("auth", self.auth.authenticate(authorization(&req)))
                    .await?;
                return Ok(json_response(200, &ServerMetadata::ours()));
            }
            ModelsOp::List => {
                let (visible, _) = self.visible(&req, route, cx).await?;
                let view = |m: &ModelInfo| ModelView {
                    versions: versions_of(&visible, &m.name),
                    ..ModelView::from(m)
                };
                json_response(
                    200,
                    &ModelList {
                        models: visible
                            .iter()
                            .filter(|m| is_default(m, &visible))
                            .map(view)
                            .collect(),
                        unavailable: visible
                            .iter()
                            .filter(|m| !is_ready(m))
                            .map(|m| UnavailableVersion {
                                name: m.name.clone(),
                                version: m.version.clone(),
                                state: m.state.clone(),
                                reason: m.reason.clone(),
                            })
                            .collect(),
                    },
                )
            }
            ModelsOp::Get => {
                let (visible, model) = self.visible(&req, route, cx).await?;
                let view = model.as_ref().map(|m| ModelView {
                    versions: versions_of(&visible, &m.name),
                    ..ModelView::from(m)
                });
                json_response(200, &view)
            }
            ModelsOp::V2Model => {
                let (visible, model) = self.visible(&req, route, cx).await?;
                let metadata = model.as_ref().map(|m| ModelMetadata {
                    versions: versions_of(&visible, &m.name),
                    ..ModelMetadata::from(m)
                });
                json_response(200, &metadata)
            }
            ModelsOp::V2ModelReady => {
                let (_, model) = self.visible(&req, route, cx).await?;
                let name = model.map(|m| m.name).unwrap_or_default();
                json_response(200, &ModelReady { name, ready: true })
            }
        };
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=30"),
        );
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_page_runs_only_its_own_script_and_style() {
        let csp = docs_csp();
        assert!(!csp.contains("unsafe"), "{csp}");
        for part in [
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "connect-src 'self'",
        ] {
            assert!(csp.contains(part), "{csp}");
        }
        // One block of each, so the two hashes cover everything inline.
        assert_eq!(DOCS_PAGE.matches("<script").count(), 1);
        assert_eq!(DOCS_PAGE.matches("<style").count(), 1);
        assert!(!DOCS_PAGE.contains(" onclick=") && !DOCS_PAGE.contains(" style=\""));
        // A changed script would not run: the hash is of these exact bytes.
        let tampered = DOCS_PAGE.replacen("</script>", "alert(1)</script>", 1);
        assert!(!csp.contains(&inline_hash(&tampered, "<script>", "</script>")));
        assert!(csp.contains(&inline_hash(DOCS_PAGE, "<script>", "</script>")));
    }
}
