//! Bench topics.

pub mod causal;
pub mod io;
pub mod seq2seq;
pub mod text;

/// The NTREX-128 dev articles beside the repository, or the bundled
/// examples when that folder is absent (a user's clone).
pub fn articles() -> Vec<serde_json::Value> {
    let ntrex = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/ntrex/ntrex-dev.jsonl"
    );
    let path = if std::path::Path::new(ntrex).exists() {
        ntrex.to_string()
    } else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{ntrex} is missing under CI");
        }
        eprintln!("note: {ntrex} not found; benchmarking examples/articles.jsonl instead");
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/articles.jsonl").to_string()
    };
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
