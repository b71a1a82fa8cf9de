//! Reading and parsing JSONL records (plain and gzip) and writing output
//! records (serialized and synced a window at a time, as a run does): the
//! stages that must keep up with any dump size.

use criterion::{criterion_group, Criterion, Throughput};
use std::io::Write;
use tidings::config::{ErrorsMode, OutputPath};
use tidings::input::article::{parse_line, FieldMap};
use tidings::input::reader::LineReader;
use tidings::output::record::{Meta, OutputRecord, TranslatedFields};
use tidings::output::writer::{Finished, Writer};

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

    // Output records of article size: the source text as summary, and the
    // human references (or the text) as the Spanish and Persian fields.
    let records: Vec<Finished> = (0..10)
        .flat_map(|rep| articles.iter().map(move |a| (rep, a)))
        .map(|(rep, a)| {
            let text = a["text"].as_str().unwrap_or_default().to_string();
            let reference = |lang: &str| {
                a["references"][lang]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_else(|| text.clone())
            };
            let fields = |lang: &str| TranslatedFields {
                title: a["title"].as_str().map(str::to_string),
                summary: Some(reference(lang)),
                text: None,
            };
            Finished::Ok(Box::new(OutputRecord {
                id: format!("{}-{rep}", a["id"].as_str().unwrap_or("record")),
                lang: "en".into(),
                title: a["title"].as_str().map(str::to_string),
                summary: Some(text.clone()),
                translations: [("es", fields("es")), ("fa", fields("fa"))]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                meta: Meta {
                    models: [("es", "m"), ("fa", "m")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    input_tokens: 900,
                    output_tokens: 400,
                    elapsed_ms: 1234,
                },
            }))
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut g = c.benchmark_group("io");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("write records, synced every 64", |b| {
        b.iter(|| {
            let mut w = Writer::open(
                &OutputPath::File(out.clone()),
                &dir.path().join("out.errors.jsonl"),
                ErrorsMode::File,
                false,
            )
            .unwrap();
            for window in records.chunks(64) {
                w.write_window(window).unwrap();
            }
            w.written_ok
        })
    });
    g.finish();
}

criterion_group!(benches, io);
