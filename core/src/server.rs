//! Assembles the Pingora server: proxy listener, admin listener, reload and DNS services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{Config, LoadedConfig};
use crate::connections::Capped;
use crate::proxy::GatewayProxy;
use crate::reload::{ReloadService, ResolveService};
use crate::runtime::Shared;

/// A listener's connection counters.
fn connection_metrics(shared: &Shared, listener: &str) -> crate::connections::ConnectionMetrics {
    crate::connections::ConnectionMetrics {
        refused: shared
            .metrics
            .connections_refused
            .with_label_values(&[listener]),
        open: shared
            .metrics
            .connections_open
            .with_label_values(&[listener]),
    }
}

/// Knobs that are about the process rather than the config file.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How often the config file is checked for changes.
    pub watch_interval: Duration,
    /// Take the listening sockets over from a running instance (graceful upgrade).
    pub upgrade: bool,
    /// Unix socket for the listener hand-over on upgrade; its folder must be private.
    pub upgrade_sock: String,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            watch_interval: Duration::from_secs(1),
            upgrade: false,
            upgrade_sock: crate::util::private_dir::default_upgrade_sock()
                .display()
                .to_string(),
        }
    }
}

fn addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Builds a ready-to-run Pingora server for `shared`'s config: the proxy listener, the admin
/// listener, certificate upkeep, config reload and upstream DNS.
pub fn build_server(shared: Arc<Shared>, opts: &ServeOptions) -> Result<Server, String> {
    crate::cluster_sync::start(&shared);
    let rt = shared.runtime.load_full();
    let c = &rt.config;
    let mut server = pingora_server(c, opts)?;
    let trusted_proxies: Vec<crate::util::Cidr> = c
        .server
        .trusted_proxies
        .iter()
        .filter_map(|t| crate::util::Cidr::parse(t).ok())
        .collect();
    let proxy = proxy_service(&shared, &mut server, opts, &trusted_proxies)?;
    server.add_service(proxy);
    if c.metrics.enabled {
        let admin = admin_service(&shared, c, &trusted_proxies)?;
        server.add_service(admin);
    }
    server.add_service(background_service(
        "config reload",
        ReloadService {
            shared: shared.clone(),
            poll: opts.watch_interval,
        },
    ));
    if rt.upstream.target.host.parse::<std::net::IpAddr>().is_err() {
        server.add_service(background_service(
            "upstream dns",
            ResolveService {
                shared,
                every: Duration::from_secs(300),
                retry: Duration::from_secs(5),
            },
        ));
    }
    Ok(server)
}

/// The Pingora server itself: threads, grace periods, the upgrade socket (in a private folder).
fn pingora_server(c: &Config, opts: &ServeOptions) -> Result<Server, String> {
    let threads = if c.server.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        c.server.threads
    };
    crate::util::private_dir::ensure_private_parent(std::path::Path::new(&opts.upgrade_sock))?;
    let conf = ServerConf {
        threads,
        work_stealing: c.server.work_stealing,
        grace_period_seconds: Some(c.server.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: opts.upgrade_sock.clone(),
        // Pingora writes it only when it daemonizes, which the gateway never asks for.
        pid_file: std::path::Path::new(&opts.upgrade_sock)
            .with_file_name("gemini-proxy.pid")
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    Ok(server)
}

type ProxyService = Service<Capped<pingora::proxy::HttpProxy<GatewayProxy>>>;

/// The proxy listener (plain or TLS), with the certificate upkeep TLS needs added to `server`.
fn proxy_service(
    shared: &Arc<Shared>,
    server: &mut Server,
    opts: &ServeOptions,
    trusted_proxies: &[crate::util::Cidr],
) -> Result<ProxyService, String> {
    let rt = shared.runtime.load_full();
    let c = &rt.config;
    let clients = &c.server.clients;
    let mut app = pingora::proxy::HttpProxy::new(
        GatewayProxy::new(shared.clone()),
        server.configuration.clone(),
    );
    app.handle_init_modules();
    app.server_options = Some(crate::connections::server_options(clients));
    let mut proxy = Service::new(
        "gemini-proxy".to_string(),
        Capped::new(
            app,
            clients,
            trusted_proxies.to_vec(),
            connection_metrics(shared, "proxy"),
        ),
    );
    let listen = addr(&c.server.host, c.server.port);
    let Some(store) = &shared.tls else {
        proxy.add_tcp(&listen);
        return Ok(proxy);
    };
    // TLS 1.2 and 1.3 (Pingora's rustls builder), h2 then http/1.1, the swappable slot.
    let mut settings = store
        .listener_settings()
        .map_err(|e| format!("TLS listener {listen}: {e}"))?;
    let acme = c.server.tls.acme.as_ref().filter(|a| a.enabled);
    if acme.is_some_and(|a| a.challenge == crate::config::AcmeChallenge::TlsAlpn01) {
        // Patched pingora-core (vendor/pingora-core/PATCH.md): ACME validation beside HTTP.
        settings.set_alpn_protocols(vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            crate::tls::ACME_TLS_ALPN.to_vec(),
        ]);
    } else {
        settings.enable_h2();
    }
    proxy.add_tls_with_settings(&listen, None, settings);
    match acme {
        Some(acme) => add_acme(shared, server, store, c, acme),
        None => {
            server.add_service(background_service(
                "certificate files",
                crate::tls::CertFileWatch {
                    audit: shared.audit_handle(),
                    store: store.clone(),
                    cert: c.server.tls.cert_path.clone().unwrap_or_default().into(),
                    key: c.server.tls.key_path.clone().unwrap_or_default().into(),
                    every: opts.watch_interval,
                },
            ));
        }
    }
    Ok(proxy)
}

/// The ACME client, and the HTTP-01 challenge listener it answers on.
fn add_acme(
    shared: &Shared,
    server: &mut Server,
    store: &Arc<crate::tls::CertStore>,
    c: &Config,
    acme: &crate::config::AcmeConfig,
) {
    let challenges = Arc::new(crate::acme::Challenges::default());
    let dir = shared
        .config_path
        .as_ref()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| ".".into());
    server.add_service(background_service(
        "acme",
        crate::acme::AcmeService {
            audit: shared.audit_handle(),
            store: store.clone(),
            cfg: acme.clone(),
            storage: crate::acme::Storage {
                dir: dir.join(&acme.storage_dir),
            },
            challenges: challenges.clone(),
        },
    ));
    let mut http01 = Service::new(
        "acme http-01".to_string(),
        crate::acme::ChallengeApp {
            challenges,
            https_port: c.server.port,
        },
    );
    http01.add_tcp(&addr(&c.server.host, acme.http_port));
    server.add_service(http01);
}

type AdminService = Service<Capped<pingora::apps::http_app::HttpServer<AdminApp>>>;

/// The admin listener (metrics, admin API), on TLS when `metrics.tls` is set.
fn admin_service(
    shared: &Arc<Shared>,
    c: &Config,
    trusted_proxies: &[crate::util::Cidr],
) -> Result<AdminService, String> {
    let clients = &c.server.clients;
    let mut admin_app = pingora::apps::http_app::HttpServer::new_app(AdminApp::new(shared.clone()));
    admin_app.server_options = Some(crate::connections::server_options(clients));
    let mut admin = Service::new(
        "gemini-proxy admin".to_string(),
        Capped::new(
            admin_app,
            clients,
            trusted_proxies.to_vec(),
            connection_metrics(shared, "admin"),
        ),
    );
    let admin_addr = addr(&c.metrics.host, c.metrics.prometheus_port);
    match (&shared.tls, c.metrics.tls) {
        (Some(store), true) => {
            let settings = store
                .listener_settings()
                .map_err(|e| format!("admin TLS listener {admin_addr}: {e}"))?;
            admin.add_tls_with_settings(&admin_addr, None, settings);
        }
        _ => admin.add_tcp(&admin_addr),
    }
    Ok(admin)
}

struct ChannelSignal(parking_lot::Mutex<Option<tokio::sync::oneshot::Receiver<ShutdownSignal>>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().take();
        match rx {
            Some(rx) => rx.await.unwrap_or(ShutdownSignal::FastShutdown),
            None => std::future::pending().await,
        }
    }
}

/// The binary's signals: SIGTERM drains (listeners stop accepting, calls in flight finish,
/// streams included), SIGQUIT hands the listening sockets to a new process started with
/// `--upgrade` and then drains, SIGINT stops at once. Pingora waits the whole grace period
/// after a SIGTERM or SIGQUIT; the gateway leaves as soon as nothing is in flight (the pool
/// state saved, the audit flushed, exit 0), or when the grace period ends.
pub struct ProcessSignals {
    pub shared: Arc<Shared>,
}

impl ProcessSignals {
    fn exit_when_drained(&self, why: &'static str) {
        let shared = self.shared.clone();
        let grace = shared.runtime.load().config.server.grace_period.0;
        let _ = std::thread::Builder::new()
            .name("drain".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                // Pingora closes the listeners (or hands them over) right after this returns;
                // a connection accepted just before has not reached the proxy yet, so "drained"
                // means nothing in flight for a while, a second after the signal.
                std::thread::sleep(Duration::from_secs(1));
                let mut idle_since: Option<std::time::Instant> = None;
                // Live sessions last longer than calls: they run until a second before the
                // grace period ends, then close with 1001 (going away) and are audited.
                let sessions_until = grace.saturating_sub(Duration::from_secs(1));
                while started.elapsed() < grace {
                    if started.elapsed() >= sessions_until && shared.metrics.live_active.get() > 0 {
                        shared.closing_sessions.send_replace(true);
                    }
                    if shared.metrics.in_flight.get() > 0 {
                        idle_since = None;
                    } else if idle_since
                        .get_or_insert_with(std::time::Instant::now)
                        .elapsed()
                        >= Duration::from_millis(500)
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
                tracing::info!(
                    why,
                    in_flight = shared.metrics.in_flight.get(),
                    waited_ms = started.elapsed().as_millis() as u64,
                    "drained; exiting"
                );
                if let Err(e) = shared.pool.save() {
                    tracing::warn!(error = %e, "cannot write the pool state file");
                }
                if let Some(a) = &shared.audit {
                    a.close();
                }
                std::process::exit(0);
            });
    }
}

#[async_trait]
impl ShutdownSignalWatch for ProcessSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining (no new connections; calls in flight finish)");
                self.exit_when_drained("SIGTERM");
                ShutdownSignal::GracefulTerminate
            }
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing the listeners to the new process, then draining");
                self.exit_when_drained("SIGQUIT");
                ShutdownSignal::GracefulUpgrade
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

/// A gateway running on a background thread of this process (tests, the demo, embedders).
pub struct RunningGateway {
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<ShutdownSignal>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningGateway {
    /// Starts the gateway and waits until its listeners accept connections.
    pub fn start(loaded: &LoadedConfig, opts: ServeOptions) -> Result<RunningGateway, String> {
        let registry = crate::builtin_registry();
        let shared = Shared::new(loaded, registry).map_err(|e| e.to_string())?;
        Self::start_shared(shared, opts)
    }

    pub fn start_shared(shared: Arc<Shared>, opts: ServeOptions) -> Result<RunningGateway, String> {
        let c = shared.runtime.load().config.clone();
        let proxy_addr: SocketAddr = addr(&c.server.host, c.server.port)
            .parse()
            .map_err(|e| format!("proxy address: {e}"))?;
        let admin_addr = c
            .metrics
            .enabled
            .then(|| addr(&c.metrics.host, c.metrics.prometheus_port).parse::<SocketAddr>())
            .transpose()
            .map_err(|e| format!("admin address: {e}"))?;
        let server = build_server(shared.clone(), &opts)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("gemini-proxy-server".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(ChannelSignal(parking_lot::Mutex::new(Some(rx)))),
                });
            })
            .map_err(|e| e.to_string())?;
        let gw = RunningGateway {
            proxy_addr,
            admin_addr,
            shared,
            stop: Some(tx),
            thread: Some(thread),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for a in std::iter::once(proxy_addr).chain(admin_addr) {
            while std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
                if std::time::Instant::now() > deadline {
                    return Err(format!("gateway did not start listening on {a}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(gw)
    }

    /// Stops the gateway and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(ShutdownSignal::FastShutdown);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            if let Err(e) = self.shared.pool.save() {
                tracing::warn!(error = %e, "cannot write the pool state file");
            }
            if let Some(a) = &self.shared.audit {
                a.close();
            }
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}
