//! The Prometheus endpoint (`[metrics] listen`), served while the policy in force asks for it:
//! `GET /metrics` over TCP or a root-only Unix socket.
//!
//! It runs on a thread and runtime of its own, like the Docker servers: a scrape reads the
//! kernel's counters and learned map itself ([`KernelReader`], from the pinned maps) and what
//! the event loop counted (a shared [`Metrics`]), and so never waits on the event loop, however
//! busy a flood of denials keeps it.

use std::{convert::Infallible, io, path::Path, sync::Arc, thread, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use log::{error, info, warn};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    runtime::Builder,
    sync::oneshot,
};

use super::sockets::bind_metrics_socket;
use crate::{
    docker::gate::clients::{Share, UserShares},
    error_chain,
    events::metrics::{KernelReading, SharedMetrics},
    kernel::{KernelReader, PinDir},
    policy::MetricsAddress,
};

/// The exposition format's content type (text format 0.0.4, what every Prometheus reads).
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scrape's request is a few hundred bytes; anything larger is not a scraper.
const MAX_HEADER: usize = 8 * 1024;

/// Connections users other than root may hold at once, together (each at most 32): a local
/// process that opens thousands must not take the daemon's file descriptors (which the event
/// loop shares), nor the scraper's place. Root's are not limited.
const OTHERS_MAX_CONNECTIONS: usize = 64;

/// Connections served at once, root's included (a root process in a host-network container
/// is uid 0 too); past it, a connection is closed at once.
const MAX_CONNECTIONS: usize = 64;

/// How long one connection may stay open: a scrape takes milliseconds, and a client that sends
/// nothing must not hold its place for ever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

pub struct MetricsServer {
    metrics: SharedMetrics,
    pins: PinDir,
    /// Where it listens now, and the sender whose drop ends that server's thread.
    running: Option<(MetricsAddress, oneshot::Sender<()>)>,
}

impl MetricsServer {
    pub fn new(metrics: SharedMetrics, pin_dir: &Path) -> Self {
        Self {
            metrics,
            pins: PinDir::new(pin_dir),
            running: None,
        }
    }

    /// Starts, moves or stops the endpoint as the policy in force says (`None`: off).
    pub fn update(&mut self, wanted: Option<&MetricsAddress>) {
        if self.running.as_ref().map(|(address, _)| address) == wanted {
            return;
        }
        self.stop();
        let Some(address) = wanted else {
            return;
        };
        match self.start(address) {
            Ok(stop) => {
                info!("metrics: Prometheus endpoint on {address}");
                self.running = Some((address.clone(), stop));
            }
            Err(err) => error!("metrics: cannot serve on {address}: {err}"),
        }
    }

    /// Ends the endpoint: its thread stops accepting, and a Unix socket is removed now (the
    /// process may exit before that thread runs again).
    pub fn stop(&mut self) {
        if let Some((address, stop)) = self.running.take() {
            drop(stop);
            if let MetricsAddress::Unix(path) = &address {
                let _ = std::fs::remove_file(path);
            }
            info!("metrics: no longer served on {address}");
        }
    }

    fn start(&self, address: &MetricsAddress) -> io::Result<oneshot::Sender<()>> {
        let reader =
            KernelReader::open(&self.pins).map_err(|err| io::Error::other(error_chain(&err)))?;
        // Bound here, so that a port in use is reported now, on the event loop's log.
        let listener = match address {
            MetricsAddress::Tcp(addr) => {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Listener::Tcp(listener)
            }
            MetricsAddress::Unix(path) => Listener::Unix(
                bind_metrics_socket(path).map_err(|err| io::Error::other(error_chain(&err)))?,
            ),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = self.metrics.clone();
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                let runtime = match Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        error!("metrics: cannot start the server's runtime: {err}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        () = serve(listener, Arc::new(CachedReader::new(reader)), metrics) => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(stop)
    }
}

/// How long one count of a large learned map serves scrapes: counting costs one system call
/// per entry, and scrapers come every few seconds at most.
const LEARNED_COUNT_LIFETIME: Duration = Duration::from_secs(1);

/// A learned map with fewer entries than this is counted afresh at every scrape (a few
/// milliseconds at most); a larger one at most once per [`LEARNED_COUNT_LIFETIME`].
const FRESH_COUNT_BELOW: usize = 4096;

/// The kernel's side of a scrape: counters read afresh each time (a few dozen lookups), the
/// learned map's size counted at most once a second when it is large.
struct CachedReader {
    reader: KernelReader,
    last_count: std::sync::Mutex<Option<(std::time::Instant, (usize, usize))>>,
}

impl CachedReader {
    fn new(reader: KernelReader) -> Self {
        Self {
            reader,
            last_count: std::sync::Mutex::default(),
        }
    }

    fn read(&self) -> KernelReading {
        let mut last = self
            .last_count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let learned = match *last {
            Some((at, count))
                if count.0 >= FRESH_COUNT_BELOW && at.elapsed() < LEARNED_COUNT_LIFETIME =>
            {
                count
            }
            _ => {
                let count = self.reader.learned();
                *last = Some((std::time::Instant::now(), count));
                count
            }
        };
        KernelReading {
            counters: self.reader.counters(),
            learned: Some(learned),
        }
    }
}

enum Listener {
    Tcp(std::net::TcpListener),
    /// Its path is removed by [`MetricsServer::stop`].
    Unix(std::os::unix::net::UnixListener),
}

/// Accepts scrapes until the runtime ends.
async fn serve(listener: Listener, reader: Arc<CachedReader>, metrics: SharedMetrics) {
    let shares = UserShares::new(OTHERS_MAX_CONNECTIONS);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    match listener {
        Listener::Tcp(listener) => {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                error!("metrics: cannot watch the listening socket");
                return;
            };
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        // Refused past the user's share: closed at once.
                        if let Some(share) = shares.admit(&stream) {
                            spawn_bounded(&slots, share, stream, &reader, &metrics);
                        }
                    }
                    Err(err) => accept_failed(&err).await,
                }
            }
        }
        Listener::Unix(listener) => {
            let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
                error!("metrics: cannot watch the listening socket");
                return;
            };
            loop {
                match listener.accept().await {
                    // The socket is root's (0600): nobody else connects.
                    Ok((stream, _)) => spawn_bounded(&slots, None, stream, &reader, &metrics),
                    Err(err) => accept_failed(&err).await,
                }
            }
        }
    }
}

/// Serves `stream` for at most [`CONNECTION_LIFETIME`] if one of the `slots` is free (closes
/// it otherwise), holding the slot and its user's `share` meanwhile.
fn spawn_bounded(
    slots: &Arc<tokio::sync::Semaphore>,
    share: Option<Share>,
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    reader: &Arc<CachedReader>,
    metrics: &SharedMetrics,
) {
    let Ok(slot) = slots.clone().try_acquire_owned() else {
        return;
    };
    let (reader, metrics) = (reader.clone(), metrics.clone());
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            CONNECTION_LIFETIME,
            serve_connection(stream, reader, metrics),
        )
        .await;
        drop((share, slot));
    });
}

/// E.g. out of file descriptors: do not spin.
async fn accept_failed(err: &io::Error) {
    warn!("metrics: accept failed: {err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve_connection(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    reader: Arc<CachedReader>,
    metrics: SharedMetrics,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let answer = answer(&request, &reader, &metrics);
        async move { Ok::<_, Infallible>(answer) }
    });
    // One scrape per connection: a client cannot pipeline scrapes to keep the thread busy.
    let served = http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_HEADER)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = served {
        log::debug!("metrics connection: {err}");
    }
}

fn answer(
    request: &Request<Incoming>,
    reader: &CachedReader,
    metrics: &SharedMetrics,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
    }
    // The kernel first, without the event loop's lock: the loop never waits on a scrape.
    let kernel = reader.read();
    let text = match metrics.lock() {
        Ok(metrics) => metrics.render(&kernel),
        Err(_) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics poisoned\n".into(),
            );
        }
    };
    reply(StatusCode::OK, text)
}
