//! Reading and parsing JSONL records (plain and gzip) and serializing
//! output records: the stages that must keep up with any dump size.

use criterion::{criterion_group, Criterion, Throughput};
use std::io::Write;
use tidings::input::article::{parse_line, FieldMap};
use tidings::input::reader::LineReader;

fn io(c: &mut Criterion) {
    let articles = super::articles();
    let mut body = Vec::new();
    for _ in 0..10 {
        for a in &articles {
            serde_json::to_writer(&mut body, a).unwrap();
            body.push(b'\n');
        }
    }
    let records = (articles.len() * 10) as u64;
    let fields = FieldMap {
        id: "id".into(),
        title: "title".into(),
        text: "text".into(),
        max_bytes: 1 << 20,
        file: "bench".into(),
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let gz = gz.finish().unwrap();

    let mut g = c.benchmark_group("io");
    g.throughput(Throughput::Elements(records));
    g.bench_function("read+parse plain", |b| {
        b.iter(|| {
            let mut r = LineReader::from_reader("bench", std::io::Cursor::new(body.clone()));
            let mut n = 0;
            while let Some(l) = r.next_line().unwrap() {
                n += matches!(
                    parse_line(l.line, &l.bytes, &fields),
                    tidings::input::article::Record::Ok(_)
                ) as usize;
            }
            n
        })
    });
    g.bench_function("read+parse gzip", |b| {
        b.iter(|| {
            let dec = flate2::read::MultiGzDecoder::new(std::io::Cursor::new(gz.clone()));
            let mut r = LineReader::from_reader("bench", dec);
            let mut n = 0;
            while let Some(l) = r.next_line().unwrap() {
                n += matches!(
                    parse_line(l.line, &l.bytes, &fields),
                    tidings::input::article::Record::Ok(_)
                ) as usize;
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, io);
