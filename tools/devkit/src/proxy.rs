//! A loopback TCP proxy whose behaviour a test switches at run time, to stand in for the
//! network faults that a process signal or a load balancer causes: a frozen peer (TCP
//! open, nothing forwarded: what SIGSTOP looks like), a dead one (connections reset,
//! new ones refused: SIGKILL), and dropped idle connections (a load balancer forgetting a
//! frozen Lambda's connections while new ones still work).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forwards both ways.
    Forward = 0,
    /// Accepts and holds every connection, forwards nothing (a stopped process).
    Frozen = 1,
    /// Resets every connection and refuses new ones (a killed process).
    Dead = 2,
    /// Connections open now go silent forever; new ones are forwarded.
    DropExisting = 3,
}

struct Shared {
    mode: AtomicU8,
    /// Bumped by `DropExisting`: connections of an older generation go silent.
    generation: AtomicU64,
    accepted: AtomicU64,
    changed: watch::Sender<()>,
}

/// The proxy; it stops when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (changed, _) = watch::channel(());
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Forward as u8),
            generation: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            changed,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::Relaxed);
                if mode(&s) == Mode::Dead {
                    drop(client);
                    continue;
                }
                tokio::spawn(pipe(client, upstream, s.clone()));
            }
        });
        Ok(Proxy { addr, shared, task })
    }

    /// Switches the behaviour.
    pub fn set(&self, to: Mode) {
        if to == Mode::DropExisting {
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.shared.mode.store(to as u8, Ordering::SeqCst);
        self.shared.changed.send_replace(());
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// `https://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

fn mode(s: &Shared) -> Mode {
    match s.mode.load(Ordering::SeqCst) {
        1 => Mode::Frozen,
        2 => Mode::Dead,
        3 => Mode::DropExisting,
        _ => Mode::Forward,
    }
}

/// Waits while this connection must not forward; false when it must close.
async fn may_forward(s: &Shared, born: u64) -> bool {
    let mut changed = s.changed.subscribe();
    loop {
        let silenced = s.generation.load(Ordering::SeqCst) > born;
        match mode(s) {
            Mode::Dead => return false,
            Mode::Forward | Mode::DropExisting if !silenced => return true,
            _ => {}
        }
        if changed.changed().await.is_err() {
            return false;
        }
    }
}

async fn pipe(client: TcpStream, upstream: SocketAddr, s: Arc<Shared>) {
    let born = s.generation.load(Ordering::SeqCst);
    if !may_forward(&s, born).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let dead = async {
        let mut changed = s.changed.subscribe();
        while mode(&s) != Mode::Dead {
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    // Dropping the halves closes both sockets.
    tokio::select! {
        _ = one_way(cr, sw, s.clone(), born) => {}
        _ = one_way(sr, cw, s.clone(), born) => {}
        _ = dead => {}
    }
}

async fn one_way(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    s: Arc<Shared>,
    born: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !may_forward(&s, born).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
