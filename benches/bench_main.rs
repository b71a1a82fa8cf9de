//! Criterion benches; one module per topic under `benchmarks/`.
//!
//! `cargo bench --bench bench_main` runs them all; figures that matter to
//! users (articles/s, tokens/s) are also printed by `tidings run`.

mod benchmarks;

criterion::criterion_main! {
    benchmarks::text::benches,
    benchmarks::io::benches,
    benchmarks::seq2seq::benches,
    benchmarks::causal::benches,
}
