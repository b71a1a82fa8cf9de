//! Every job config shipped in `configs/` parses and validates.

use tidings::config::{Job, Overrides};

#[test]
fn every_shipped_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let job = Job::load(&path, &Overrides::default())
            .unwrap_or_else(|e| panic!("{}: {:#}", path.display(), anyhow::Error::from(e)));
        assert!(!job.used_models().is_empty(), "{}", path.display());
        n += 1;
    }
    assert!(n >= 5, "found only {n} configs");
}

#[test]
fn demo_config_matches_the_readme() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/demo.toml");
    let job = Job::load(path.as_ref(), &Overrides::default()).unwrap();
    let t = job.translate.unwrap();
    let codes: Vec<_> = t.targets.iter().map(|l| l.code).collect();
    assert_eq!(codes, ["es", "fa"]);
    assert!(
        job.input.path
            == tidings::config::InputPath::File(
                std::path::Path::new(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/configs/../examples/articles.jsonl"
                ))
                .to_path_buf()
            )
    );
}
