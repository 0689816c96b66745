//! The worker's network edge: its own TLS acceptor in front of tonic, so that what happens
//! before a caller is authenticated is bounded and the certificates can be rotated live.
//!
//! - **Two budgets**: at most `max_handshakes` connections are in their TLS handshake and
//!   at most `max_connections` are authenticated, so descriptors cannot pile up and peers
//!   that never handshake do not take the authenticated clients' places. When the
//!   handshake budget is full, the oldest pending handshake is closed for the newest: a real
//!   client finishes in milliseconds, an idle peer is the one that ages out. One more
//!   authenticated connection than the cap is closed after its handshake.
//! - **Handshake timeout**: a connection that has not finished its TLS handshake within
//!   `handshake_timeout` (idle TCP, a slow-loris client) is closed.
//! - **Client names**: with `client_names` set, a client certificate must also be valid for
//!   one of those names (its subject alternative names, checked like a server name), not
//!   merely chain to the CA. Certificates named in `health_names` may call only
//!   `grpc.health.v1` (the gateway's health function holds one, not the predict key), those
//!   in `catalog_names` only `ListModels` (the gateway's models function), those in
//!   `admin_names` only the `ModelRepository` admin service.
//! - **Reload**: [`Acceptor::reload`] re-reads the certificate, key and CA (the worker calls
//!   it on SIGHUP); new handshakes use them, established connections keep going.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use inferencehub_proto::settings::read_pem;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::Metrics;

/// Where the PEM material comes from: file paths (re-read on reload) or the PEM text.
#[derive(Debug, Clone)]
pub struct TlsSources {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Its certificate revocation lists, if any.
    pub client_crl: Option<PathBuf>,
}

/// Which client certificates may call what.
#[derive(Debug, Clone, Default)]
pub struct ClientNames {
    /// Names that may call every service. Empty (and `health` empty): any certificate
    /// from the CA may.
    pub full: Vec<String>,
    /// Names that may call only `grpc.health.v1`.
    pub health: Vec<String>,
    /// Names that may call only the `ModelRepository` admin service (and health).
    pub admin: Vec<String>,
    /// Names that may call only `ListModels` (and health).
    pub catalog: Vec<String>,
}

impl ClientNames {
    /// Checks that every name is a valid DNS name (what the certificate check compares).
    pub fn validate(&self) -> anyhow::Result<()> {
        for name in self
            .full
            .iter()
            .chain(&self.health)
            .chain(&self.admin)
            .chain(&self.catalog)
        {
            ServerName::try_from(name.as_str())
                .map_err(|_| anyhow::anyhow!("invalid client certificate name {name:?}"))?;
        }
        Ok(())
    }

    fn restricted(&self) -> bool {
        !self.full.is_empty() || !self.health.is_empty() || !self.catalog.is_empty()
    }

    /// What a verified certificate may do, or `None` when its names are not allowed.
    fn role_of(&self, cert: &CertificateDer<'_>) -> Option<Role> {
        // An admin certificate is only that, whatever else its names match.
        if valid_for_any(cert, &self.admin) {
            return Some(Role::Admin);
        }
        if !self.restricted() {
            return Some(Role::Full);
        }
        if valid_for_any(cert, &self.full) {
            Some(Role::Full)
        } else if valid_for_any(cert, &self.catalog) {
            Some(Role::Catalog)
        } else if valid_for_any(cert, &self.health) {
            Some(Role::HealthOnly)
        } else {
            None
        }
    }
}

fn valid_for_any(cert: &CertificateDer<'_>, names: &[String]) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    names.iter().any(|name| {
        ServerName::try_from(name.as_str())
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// What an authenticated peer may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every service.
    Full,
    /// Only `grpc.health.v1`.
    HealthOnly,
    /// Only the `ModelRepository` admin service (and `grpc.health.v1`).
    Admin,
    /// Only `ListModels` (and `grpc.health.v1`): the gateway's models function.
    Catalog,
}

/// What a call to the worker does, for [`Role::may`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `Predict`, `PredictBatch`.
    Predict,
    /// `ListModels`.
    ListModels,
}

impl Role {
    /// Whether a peer of this role may make `call` (the `ModelInference` service's calls;
    /// `grpc.health.v1` is open to every role, `ModelRepository` to admins only).
    pub fn may(self, call: Call) -> bool {
        match self {
            Role::Full => true,
            Role::Catalog => call == Call::ListModels,
            Role::HealthOnly | Role::Admin => false,
        }
    }

    fn refusal(self) -> &'static str {
        match self {
            Role::Full => "",
            Role::Catalog => "this client certificate may call only ListModels and grpc.health.v1",
            Role::Admin => {
                "this client certificate may call only the ModelRepository admin service"
            }
            Role::HealthOnly => "this client certificate may call only grpc.health.v1",
        }
    }
}

/// PERMISSION_DENIED unless the request's peer may make `call`. `ModelInference`'s handlers
/// call it first; the service's interceptor ([`require_inference_role`]) has already
/// turned away the roles that may make none of its calls.
pub fn require<T>(request: &tonic::Request<T>, call: Call) -> Result<(), tonic::Status> {
    match request.extensions().get::<Peer>() {
        Some(peer) if peer.role.may(call) => Ok(()),
        Some(peer) => Err(tonic::Status::permission_denied(peer.role.refusal())),
        None => Err(tonic::Status::permission_denied(
            "no authenticated client certificate",
        )),
    }
}

/// The connection facts tonic puts into every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// What its certificate allows.
    pub role: Role,
}

/// Limits of the edge.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Longest time from TCP accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// Most authenticated connections open at once.
    pub max_connections: usize,
    /// Most connections in their handshake at once; past it the oldest makes way.
    pub max_handshakes: usize,
}

/// The chain-and-name check: the CA's WebPKI verifier, then the allowed names, so a
/// certificate for another name fails the handshake with a TLS alert.
#[derive(Debug)]
struct NamedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    names: ClientNames,
}

impl ClientCertVerifier for NamedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match self.names.role_of(end_entity) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            )),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn server_config(sources: &TlsSources, names: &ClientNames) -> anyhow::Result<ServerConfig> {
    let read = |path: &PathBuf| read_pem(path).map_err(anyhow::Error::msg);
    let chain = CertificateDer::pem_slice_iter(&read(&sources.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing --tls-cert")?;
    anyhow::ensure!(!chain.is_empty(), "--tls-cert holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(&read(&sources.key)?).context("parsing --tls-key")?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read(&sources.client_ca)?) {
        roots
            .add(ca.context("parsing --tls-client-ca")?)
            .context("adding --tls-client-ca")?;
    }
    anyhow::ensure!(!roots.is_empty(), "--tls-client-ca holds no certificate");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(path) = &sources.client_crl {
        let crls = CertificateRevocationListDer::pem_slice_iter(&read(path)?)
            .collect::<Result<Vec<_>, _>>()
            .context("parsing --tls-client-crl")?;
        anyhow::ensure!(
            !crls.is_empty(),
            "--tls-client-crl holds no revocation list"
        );
        builder = builder.with_crls(crls);
    }
    let webpki = builder
        .build()
        .context("building the client certificate check (--tls-client-ca, --tls-client-crl)")?;
    let verifier = Arc::new(NamedClientVerifier {
        inner: webpki,
        names: names.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The TLS acceptor with its current configuration.
pub struct Acceptor {
    sources: TlsSources,
    names: ClientNames,
    config: RwLock<Arc<ServerConfig>>,
}

impl Acceptor {
    /// Reads the material and builds the first configuration.
    pub fn new(sources: TlsSources, names: ClientNames) -> anyhow::Result<Self> {
        names.validate()?;
        let config = server_config(&sources, &names)?;
        Ok(Self {
            sources,
            names,
            config: RwLock::new(Arc::new(config)),
        })
    }

    /// Re-reads the certificate, key and CA. On error the old configuration stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = Arc::new(server_config(&self.sources, &self.names)?);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A place under the connection cap, given back (and counted down) on drop.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: prometheus::IntGauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, open: prometheus::IntGauge) -> Self {
        open.inc();
        Self {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// An established, authenticated connection; it holds its slot under the cap.
pub struct Conn {
    stream: TlsStream<TcpStream>,
    peer: Peer,
    _slot: Slot,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections in their handshake, oldest first: each can be told to give way.
#[derive(Default)]
struct Pending {
    queue: std::sync::Mutex<std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>>,
}

impl Pending {
    /// Admits handshake `id`, telling the oldest to give way when `max` are pending; the
    /// receiver fires when `id` itself must give way.
    fn admit(&self, id: u64, max: usize) -> (tokio::sync::oneshot::Receiver<()>, bool) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = false;
        while queue.len() >= max.max(1) {
            let Some((_, oldest)) = queue.pop_front() else {
                break;
            };
            evicted |= oldest.send(()).is_ok();
        }
        queue.push_back((id, tx));
        (rx, evicted)
    }

    /// Handshake `id` is over (done, failed or gave way).
    fn finish(&self, id: u64) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = queue.iter().position(|(i, _)| *i == id) {
            queue.remove(at);
        }
    }
}

/// A pending handshake: counted while it lasts, taken off the queue when it ends.
struct Handshaking {
    id: u64,
    pending: Arc<Pending>,
    gauge: prometheus::IntGauge,
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.pending.finish(self.id);
        self.gauge.dec();
    }
}

/// Accepts on `listener` and yields authenticated connections for tonic's
/// `serve_with_incoming`. The accept loop ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: Arc<Acceptor>,
    limits: EdgeLimits,
    metrics: Arc<Metrics>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let pending = Arc::new(Pending::default());
    tokio::spawn(async move {
        let mut next_id = 0u64;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors or a reset before accept: wait a little, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            next_id += 1;
            let (give_way, evicted) = pending.admit(next_id, limits.max_handshakes);
            if evicted {
                tracing::warn!(%remote, max = limits.max_handshakes, "handshake budget full: the oldest pending handshake makes way");
            }
            metrics.connections_handshaking.inc();
            let handshaking = Handshaking {
                id: next_id,
                pending: pending.clone(),
                gauge: metrics.connections_handshaking.clone(),
            };
            let _ = tcp.set_nodelay(true);
            let config = acceptor.current();
            let names = acceptor.names.clone();
            let tx = tx.clone();
            let metrics = metrics.clone();
            let slots = slots.clone();
            tokio::spawn(async move {
                // A refusal is counted before its socket closes (the handshake future, and
                // on failure the error, hold the socket until then): whoever sees the close
                // also sees the count.
                let handshake = tokio_rustls::TlsAcceptor::from(config)
                    .accept(tcp)
                    .into_fallible();
                tokio::pin!(handshake);
                let finished = tokio::select! {
                    finished = tokio::time::timeout(limits.handshake_timeout, &mut handshake) => finished,
                    _ = give_way => {
                        metrics.refused("handshake_evicted");
                        tracing::info!(%remote, "pending handshake closed to make way for a newer one");
                        return;
                    }
                };
                let stream = match finished {
                    Ok(Ok(stream)) => stream,
                    Ok(Err((e, _tcp))) => {
                        metrics.refused("handshake_failed");
                        tracing::info!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics.refused("handshake_timeout");
                        tracing::info!(%remote, "TLS handshake timed out: closing");
                        return;
                    }
                };
                drop(handshaking);
                let role = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| names.role_of(cert));
                let Some(role) = role else {
                    metrics.refused("handshake_failed");
                    return;
                };
                let Ok(permit) = slots.try_acquire_owned() else {
                    metrics.refused("connection_cap");
                    tracing::warn!(%remote, max = limits.max_connections, "authenticated connection cap reached: closing a new connection");
                    return;
                };
                let peer = Peer {
                    remote: Some(remote),
                    role,
                };
                let _ = tx
                    .send(Ok(Conn {
                        stream,
                        peer,
                        _slot: Slot::new(permit, metrics.connections_open.clone()),
                    }))
                    .await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The check in front of `ModelInference`: a role that may make none of its calls (health,
/// admin) gets PERMISSION_DENIED there; each handler then checks its own call ([`require`]).
pub fn require_inference_role(
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    match request.extensions().get::<Peer>() {
        Some(peer) if peer.role.may(Call::Predict) || peer.role.may(Call::ListModels) => {
            Ok(request)
        }
        Some(peer) => Err(tonic::Status::permission_denied(peer.role.refusal())),
        None => Err(tonic::Status::permission_denied(
            "no authenticated client certificate",
        )),
    }
}

/// The check in front of `ModelRepository`: only admin certificates (named in
/// `--tls-admin-names`) pass; the gateway's and the health function's get
/// PERMISSION_DENIED.
pub fn require_admin_role(
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    match request.extensions().get::<Peer>() {
        Some(peer) if peer.role == Role::Admin => Ok(request),
        _ => Err(tonic::Status::permission_denied(
            "ModelRepository is for admin client certificates only (--tls-admin-names)",
        )),
    }
}
