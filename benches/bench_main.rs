//! Criterion benches; one module per topic under `benchmarks/`.
//!
//! `cargo bench --bench bench_main` runs them all; figures that matter to
//! users (articles/s, tokens/s) are also printed by `tidings run`. Like the
//! binary, the bench process puts its weights on huge pages where
//! `TIDINGS_HUGE_PAGES=1` (`tidings::huge_pages`).

mod benchmarks;

/// `criterion_main!`'s body, after the restart.
fn main() {
    tidings::huge_pages::restart_with_huge_pages();
    benchmarks::text::benches();
    benchmarks::io::benches();
    benchmarks::seq2seq::benches();
    benchmarks::causal::benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
