//! A minimal, fast webhook receiver for `scripts/bench.sh`: HTTP/1.1 with keep-alive on
//! loopback, answers every request `200 OK`, and prints how many it received when stdin
//! closes. It exists so the benchmark measures the daemon, not the receiver.
//!
//! usage: cargo run --release --example bench_receiver -- PORT [DELAY_MS]
//!
//! With DELAY_MS, each answer waits that long first: a slow receiver (scripts/bench-latency.sh).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(18080);
    let delay = std::time::Duration::from_millis(
        std::env::args()
            .nth(2)
            .and_then(|d| d.parse().ok())
            .unwrap_or(0),
    );
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        // Read the whole body, as a real receiver would.
                        let _ = request.into_body().collect().await;
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        counter.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    println!("listening on 127.0.0.1:{port}");
    // Until stdin closes (std's blocking read, on a thread of its own).
    tokio::task::spawn_blocking(|| {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
    })
    .await??;
    println!("received {}", received.load(Ordering::Relaxed));
    Ok(())
}
