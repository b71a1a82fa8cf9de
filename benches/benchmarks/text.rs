//! Text preparation: cleaning, segmentation and language detection per
//! article (the rayon stage of the pipeline), single-threaded.

use criterion::{criterion_group, Criterion, Throughput};
use tidings::text::{clean, langid, segment};

fn prepare(c: &mut Criterion) {
    let texts: Vec<String> = super::articles()
        .iter()
        .map(|a| a["text"].as_str().unwrap().to_string())
        .collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    let mut g = c.benchmark_group("text");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("clean", |b| {
        b.iter(|| texts.iter().map(|t| clean::clean(t).len()).sum::<usize>())
    });
    g.bench_function("clean+segment", |b| {
        b.iter(|| {
            texts
                .iter()
                .map(|t| segment::segment(&clean::clean(t)).len())
                .sum::<usize>()
        })
    });
    g.bench_function("langid", |b| {
        b.iter(|| texts.iter().filter(|t| langid::detect(t).is_some()).count())
    });
    g.finish();
}

criterion_group!(benches, prepare);
