//! Serves a Lambda HTTP handler over plain HTTP/1.1 in-process: the same code the Lambda
//! binaries run, reachable with real HTTP requests for tests, benchmarks and local
//! development. (Under AWS, API Gateway and `lambda_http` play this part.)

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lambda_http::{Body, Request, Response};

/// Largest request body the adapter reads (API Gateway + Lambda cap payloads near 6 MB).
pub const MAX_TRANSPORT_BODY: usize = 6 * 1024 * 1024;

/// What answers the requests: the handler, and the answer for a body over
/// [`MAX_TRANSPORT_BODY`] (which API Gateway refuses before any function runs).
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn call(&self, req: Request) -> impl Future<Output = Response<Body>> + Send;
    /// The answer to a body larger than `limit` bytes.
    fn too_large(&self, limit: usize) -> Response<Body>;
}

/// A lambda_http body as bytes.
fn to_body(body: Body) -> Full<Bytes> {
    match body {
        Body::Text(t) => Full::new(Bytes::from(t)),
        Body::Binary(b) => Full::new(Bytes::from(b)),
        _ => Full::new(Bytes::new()),
    }
}

async fn answer<H: Handler>(
    handler: Arc<H>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let response = match Limited::new(body, MAX_TRANSPORT_BODY).collect().await {
        Err(_) => handler.too_large(MAX_TRANSPORT_BODY),
        Ok(collected) => {
            let bytes = collected.to_bytes();
            // As API Gateway hands bodies to lambda_http: text when UTF-8, else binary.
            let body = if bytes.is_empty() {
                Body::Empty
            } else {
                match String::from_utf8(bytes.to_vec()) {
                    Ok(text) => Body::Text(text),
                    Err(e) => Body::Binary(e.into_bytes()),
                }
            };
            handler.call(http::Request::from_parts(parts, body)).await
        }
    };
    let (parts, body) = response.into_parts();
    Ok(hyper::Response::from_parts(parts, to_body(body)))
}

/// Serves `handler` on `listener` until `shutdown` resolves.
pub async fn serve<H: Handler>(
    listener: tokio::net::TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(handler.clone(), req));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}
