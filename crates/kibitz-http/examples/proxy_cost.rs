//! What reading client addresses costs in-process, without sockets (bench/proxy.sh prints it
//! beside the end-to-end figures, which other work on the machine blurs): the client IP of a
//! request from a trusted proxy with `X-Forwarded-For`, the same with nothing trusted, and
//! reading a PROXY v1 and v2 header from the start of a connection.
//!
//!   cargo run --release -p kibitz-http --example proxy_cost [-- ITERATIONS]

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use axum::http::{HeaderMap, HeaderValue};
use kibitz_http::client_ip::{ForwardedHeader, TrustedProxies, parse_cidr};
use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

fn ns_per(n: u64, f: impl FnMut()) -> f64 {
    let mut f = f;
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let trusted = TrustedProxies::new(
        vec![
            parse_cidr("127.0.0.1").unwrap(),
            parse_cidr("10.0.0.0/8").unwrap(),
        ],
        ForwardedHeader::XForwardedFor,
    );
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1"));
    h.insert(
        "x-forwarded-for",
        HeaderValue::from_static("198.18.0.1, 10.1.2.3"),
    );
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let xff = ns_per(n, || {
        black_box(black_box(&trusted).client_ip(black_box(peer), black_box(&h)));
    });
    let none = TrustedProxies::default();
    let off = ns_per(n, || {
        black_box(black_box(&none).client_ip(black_box(peer), black_box(&h)));
    });
    println!("client IP, trusted proxy + X-Forwarded-For (2 hops): {xff:.0} ns a request");
    println!("client IP, nothing trusted:                          {off:.0} ns a request");

    let request = b"GET /api/turn HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let v1 = [
        b"PROXY TCP4 198.18.0.1 127.0.0.1 10000 9000\r\n".as_slice(),
        request,
    ]
    .concat();
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend([198, 18, 0, 1, 127, 0, 0, 1, 0x27, 0x10, 0x23, 0x28]);
    v2.extend(request);
    let m = n / 10;
    for (name, input) in [("v1", v1), ("v2", v2)] {
        let t0 = Instant::now();
        for _ in 0..m {
            let io = std::io::Cursor::new(input.clone());
            let (s, addr) = kibitz_http::proxy_protocol::read_header(io, Duration::from_secs(5))
                .await
                .expect("a valid header");
            black_box((s, addr));
        }
        let ns = t0.elapsed().as_nanos() as f64 / m as f64;
        println!("PROXY {name} header read and parsed:                    {ns:.0} ns a connection");
    }
}
