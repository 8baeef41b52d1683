//! GEMM 4096×768×3072 f32 on the CPU backend (the shape of a ViT-B MLP over 4096 tokens).
//! Throughput is reported in FLOP/s ("elements" = floating-point operations).
use clipcu::bench::GemmCase;
use clipcu::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

fn gemm(c: &mut Criterion) {
    let case = GemmCase::new(4096, 768, 3072, Device::Cpu).expect("gemm case");
    let mut group = c.benchmark_group("gemm");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(case.flops() as u64));
    group.bench_function("f32 4096x768x3072", |b| {
        b.iter(|| case.run().expect("gemm"))
    });
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
