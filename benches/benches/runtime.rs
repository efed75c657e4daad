//! Runtime benchmarks, each against its peer in the same run:
//! - instantiation from the pooling allocator vs on demand;
//! - one request through a web dyno (loopback HTTP, fresh instance) vs a bare TCP round trip;
//! - the cold path: starting a dyno and serving its first request.
//!
//! Run with `cargo bench -p skiff-benches`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use skiff_runtime::{DynoSpec, Limits, LogSink, OutboundPolicy, Runtime, RuntimeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Quiet;

impl LogSink for Quiet {
    fn line(&self, _app: &str, _dyno: &str, _text: &str) {}
}

fn runtime(pooled: bool, cache: &std::path::Path) -> Runtime {
    let config = RuntimeConfig {
        pool_instances: pooled.then_some(1000),
        max_memory_bytes: 256 << 20,
        keep_resident_bytes: skiff_runtime::DEFAULT_KEEP_RESIDENT_BYTES,
        ..RuntimeConfig::new(cache.to_owned())
    };
    match Runtime::new(config) {
        Ok(r) => r,
        Err(e) => panic!("runtime: {e}"),
    }
}

async fn get(addr: std::net::SocketAddr) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let _ = s.set_nodelay(true);
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: bench.localhost\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    black_box(buf);
}

fn benches(c: &mut Criterion) {
    let component = skiff_benches::hello_component();
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let app_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio: {e}"));

    let mut group = c.benchmark_group("instantiate");
    for (name, pooled) in [("pooling", true), ("on-demand", false)] {
        let r = runtime(pooled, cache.path());
        let loaded = r
            .load("bench", &component)
            .unwrap_or_else(|e| panic!("load: {e}"));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let _ = black_box(r.time_instantiation(&loaded).await);
            })
        });
    }
    group.finish();

    let r = runtime(true, cache.path());
    let loaded = r
        .load("bench", &component)
        .unwrap_or_else(|e| panic!("load: {e}"));
    let spec = |name: &str| DynoSpec {
        app: "bench".into(),
        name: name.into(),
        release: 1,
        component: loaded.clone(),
        env: Vec::new(),
        args: Vec::new(),
        app_dir: app_dir.path().to_owned(),
        tmp_dir: None,
        limits: Limits::default(),
        outbound: Arc::new(OutboundPolicy::Closed),
        log: Arc::new(Quiet),
    };

    let mut group = c.benchmark_group("request");
    let dyno = rt
        .block_on(r.start_web_dyno(spec("web.1")))
        .unwrap_or_else(|e| panic!("dyno: {e}"));
    group.bench_function("through a dyno", |b| {
        b.to_async(&rt).iter(|| get(dyno.addr))
    });
    // The peer: the same HTTP exchange against a server that answers without any guest.
    let echo = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 18\r\nconnection: close\r\n\r\nHello from Skiff!\n")
                        .await;
                });
            }
        });
        addr
    });
    group.bench_function("bare loopback HTTP (peer)", |b| {
        b.to_async(&rt).iter(|| get(echo))
    });
    dyno.stop();
    group.finish();

    let mut group = c.benchmark_group("cold path");
    group.sample_size(20);
    group.bench_function("start a dyno and serve its first request", |b| {
        b.to_async(&rt).iter(|| async {
            if let Ok(d) = r.start_web_dyno(spec("web.cold")).await {
                get(d.addr).await;
                d.stop();
            }
        })
    });
    group.finish();
}

criterion_group!(runtime_benches, benches);
criterion_main!(runtime_benches);
