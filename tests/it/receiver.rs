//! A real HTTP receiver on loopback for the fault tests: counts successful deliveries per
//! account (from the webhook's JSON body) and can be slow, down, or fail a share of
//! requests at random (a seeded generator, so a failing run can be replayed).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    /// Successful (2xx) deliveries per account id.
    delivered: Mutex<HashMap<String, u64>>,
    requests: AtomicU64,
    /// Requests being answered now, and the most at once.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    down: AtomicBool,
    delay_ms: AtomicU64,
    /// Share of requests answered 503, in percent.
    fail_percent: AtomicU64,
    rng: Mutex<Option<StdRng>>,
}

#[derive(Clone)]
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        *state.rng.lock().unwrap() = Some(StdRng::seed_from_u64(20261127));
        let served = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_fail_percent(&self, percent: u64) {
        self.state.fail_percent.store(percent, Ordering::SeqCst);
    }

    /// Successful deliveries per account.
    pub fn delivered(&self) -> HashMap<String, u64> {
        self.state.delivered.lock().unwrap().clone()
    }

    pub fn total_delivered(&self) -> u64 {
        self.delivered().values().sum()
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The most requests it was answering at once.
    pub fn max_in_flight(&self) -> u64 {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<State>);

impl InFlight {
    fn new(state: Arc<State>) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::new(state.clone());
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let percent = state.fail_percent.load(Ordering::SeqCst);
    let unlucky = percent > 0
        && state
            .rng
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(|rng| rng.random_range(0..100) < percent);
    let refuse = state.down.load(Ordering::SeqCst) || unlucky;
    if !refuse {
        // Counted on arrival, as a real receiver acts on a request even if the sender dies
        // before reading the answer: that is what makes a crash repeat deliveries.
        let account = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["account_id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        *state.delivered.lock().unwrap().entry(account).or_default() += 1;
    }
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if refuse {
        let mut response = Response::new(Full::new(Bytes::from_static(b"unavailable")));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return Ok(response);
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}
