//! One transformer block (width 768, 12 heads, 50 tokens, batch 16) forward + backward on the CPU
//! backend. Throughput is reported in FLOP/s ("elements" = floating-point operations).
use clipcu::bench::BlockCase;
use clipcu::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

fn block(c: &mut Criterion) {
    let case = BlockCase::new(16, 50, 768, Device::Cpu).expect("block case");
    let mut group = c.benchmark_group("transformer_block");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(case.flops() as u64));
    group.bench_function("fwd+bwd w768 t50 b16", |b| {
        b.iter(|| case.run().expect("block"))
    });
    group.finish();
}

criterion_group!(benches, block);
criterion_main!(benches);
