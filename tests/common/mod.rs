//! Fixtures shared by the integration tests (`tests/it`), one file per kind
//! of fixture.

pub mod tiny_bert;
pub mod tiny_gguf;

/// Whether the tests run under CI (`CI=true`), where missing data or models
/// are failures instead of skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The NTREX-128 dev articles beside the repository; `None` with a printed
/// note when absent, a panic when absent under CI.
pub fn ntrex() -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/ntrex/ntrex-dev.jsonl"
    ));
    if p.exists() {
        return Some(p);
    }
    assert!(!in_ci(), "{} is missing under CI", p.display());
    eprintln!("skipped: {} not found", p.display());
    None
}
