//! CLIP's contrastive loss forward + backward on the CPU backend, fused (tiles, never the N×N
//! logits) beside composed (normalize, matmul, two cross-entropies over the logits), in the same
//! process so the two are compared as a ratio. N = 4096, D = 512 (`clipcu-bench contrastive`
//! also runs 16,384 and prints the bytes each keeps for backward).
use clipcu::bench::ContrastiveCase;
use clipcu::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

fn contrastive(c: &mut Criterion) {
    let mut group = c.benchmark_group("contrastive_loss");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for fused in [true, false] {
        let case = ContrastiveCase::new(4096, 512, fused, clipcu::DType::F32, Device::Cpu)
            .expect("contrastive case");
        group.throughput(Throughput::Elements(case.flops() as u64));
        let name = if fused {
            "fused n4096 d512"
        } else {
            "composed n4096 d512"
        };
        group.bench_function(name, |b| b.iter(|| case.run().expect("contrastive")));
    }
    group.finish();
}

criterion_group!(benches, contrastive);
criterion_main!(benches);
