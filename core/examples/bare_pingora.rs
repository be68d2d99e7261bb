//! Benchmark baseline: the smallest Pingora reverse proxy (no pipeline, no stats, no logging),
//! so `scripts/bench` can show how much of the gateway's cost is Pingora's own floor.
//! Usage: `bare_pingora LISTEN_PORT UPSTREAM_PORT`

use async_trait::async_trait;
use pingora::prelude::*;

struct Bare {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        req: &mut RequestHeader,
        _c: &mut (),
    ) -> Result<()> {
        req.insert_header("x-goog-api-key", "valid-bench-a")?;
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, up) = (&args[1], &args[2]);
    let conf = pingora::server::configuration::ServerConf {
        threads: 1,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut svc = http_proxy_service(
        &server.configuration,
        Bare {
            upstream: format!("127.0.0.1:{up}").parse().expect("port"),
        },
    );
    svc.add_tcp(&format!("127.0.0.1:{listen}"));
    server.add_service(svc);
    server.run_forever();
}
