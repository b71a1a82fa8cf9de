//! Model files from the Hugging Face Hub, against a local fake Hub: download,
//! revision pinning, cache reuse, offline mode and the errors a user sees.
//! Settings are passed explicitly ([`HubSettings`]), so these tests never
//! touch the process environment and can run in parallel.

#[path = "../common/hubserver.rs"]
mod hubserver;

use std::fs;
use std::path::Path;

use hubserver::{commit_of, HubServer};
use tidings::models::hub::{FetchPolicy, HubSettings, ModelFiles, ModelSource};
use tidings::models::packages::Store;

/// A fake Hub with files under `dir/served` and a cache in `dir/cache`.
fn setup(dir: &Path) -> (HubServer, HubSettings) {
    let server = HubServer::start(&dir.join("served"));
    let settings = HubSettings {
        endpoint: Some(server.endpoint()),
        cache_dir: dir.join("cache"),
        token: None,
        offline: false,
        progress: false,
    };
    (server, settings)
}

fn open(source: &str, policy: FetchPolicy, settings: &HubSettings) -> tidings::Result<ModelFiles> {
    let source = ModelSource::parse(source, Path::new(".")).expect("valid source");
    // Package sources are not used here; the store only has to exist.
    let store = Store::new(settings.cache_dir.join("pkgs"));
    ModelFiles::open_with("m", &source, policy, settings, &store)
}

/// The full message, source chain included, as `main` prints it.
fn message(err: tidings::Error) -> String {
    format!("{:#}", anyhow::Error::from(err))
}

#[test]
fn downloads_a_named_file_and_then_uses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (server, settings) = setup(dir.path());
    server.put("owner/repo", "main", "model.gguf", b"GGUF main weights");
    server.put("owner/repo", "main", "tokenizer.json", b"{\"model\":{}}");

    let files = open("hf:owner/repo:model.gguf", FetchPolicy::Allow, &settings).unwrap();
    let primary = files.primary().expect("a named file is primary");
    assert_eq!(fs::read(primary).unwrap(), b"GGUF main weights");
    assert!(
        primary.starts_with(&settings.cache_dir),
        "{}",
        primary.display()
    );
    assert_eq!(files.id(), "owner/repo@main:model.gguf");
    // hf-hub probes the size with `bytes=0-0`, then fetches the content.
    assert_eq!(server.content_requests(), 1);
    assert!(server.seen()[0]
        .path
        .ends_with("/owner/repo/resolve/main/model.gguf"));

    let tokenizer = files.get("tokenizer.json").unwrap();
    assert_eq!(fs::read(tokenizer).unwrap(), b"{\"model\":{}}");
    assert_eq!(server.content_requests(), 2);

    // Everything is cached now: opening again and asking again is silent.
    let before = server.requests();
    let again = open("hf:owner/repo:model.gguf", FetchPolicy::Allow, &settings).unwrap();
    assert_eq!(
        fs::read(again.primary().unwrap()).unwrap(),
        b"GGUF main weights"
    );
    again.get("tokenizer.json").unwrap();
    assert_eq!(server.requests(), before);
}

#[test]
fn revisions_are_pinned_and_cached_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let (server, settings) = setup(dir.path());
    server.put("owner/repo", "main", "config.json", b"{\"v\":\"main\"}");
    server.put("owner/repo", "v1", "config.json", b"{\"v\":1}");

    let v1 = open("hf:owner/repo@v1", FetchPolicy::Allow, &settings).unwrap();
    assert_eq!(v1.id(), "owner/repo@v1");
    assert_eq!(v1.primary(), None);
    assert_eq!(
        fs::read(v1.get("config.json").unwrap()).unwrap(),
        b"{\"v\":1}"
    );
    assert!(server
        .seen()
        .iter()
        .all(|s| s.path.contains("/resolve/v1/")));

    let main = open("hf:owner/repo", FetchPolicy::Allow, &settings).unwrap();
    assert_eq!(main.id(), "owner/repo@main");
    assert_eq!(
        fs::read(main.get("config.json").unwrap()).unwrap(),
        b"{\"v\":\"main\"}"
    );

    // Both stay cached under their own commit.
    let before = server.requests();
    let v1_path = v1.get("config.json").unwrap();
    let main_path = main.get("config.json").unwrap();
    assert_eq!(server.requests(), before);
    assert!(v1_path
        .to_string_lossy()
        .contains(&commit_of("owner/repo", "v1")));
    assert!(main_path
        .to_string_lossy()
        .contains(&commit_of("owner/repo", "main")));
}

#[test]
fn offline_reads_only_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (server, settings) = setup(dir.path());
    server.put("owner/repo", "main", "model.gguf", b"weights");
    server.put("owner/repo", "main", "extra.json", b"{}");
    open("hf:owner/repo:model.gguf", FetchPolicy::Allow, &settings).unwrap();
    let before = server.requests();

    let offline = HubSettings {
        offline: true,
        ..settings.clone()
    };
    let files = open("hf:owner/repo:model.gguf", FetchPolicy::Allow, &offline).unwrap();
    assert_eq!(fs::read(files.primary().unwrap()).unwrap(), b"weights");

    // A miss is an error naming repo, revision and file, and asks nothing.
    let err = message(files.get("extra.json").unwrap_err());
    for part in ["`m`", "owner/repo", "main", "extra.json", "HF_HUB_OFFLINE"] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
    let err =
        message(open("hf:owner/repo@v2:model.gguf", FetchPolicy::Allow, &offline).unwrap_err());
    for part in ["owner/repo", "v2", "model.gguf"] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
    // An optional file that was never fetched counts as absent.
    assert_eq!(files.get_optional("generation_config.json").unwrap(), None);
    assert_eq!(server.requests(), before);

    // A command that must not download behaves the same, even online.
    let err = message(
        open(
            "hf:owner/repo:extra.json",
            FetchPolicy::CacheOnly,
            &settings,
        )
        .unwrap_err(),
    );
    assert!(
        err.contains("extra.json") && err.contains("tidings models fetch"),
        "{err}"
    );
    assert_eq!(server.requests(), before);
}

#[test]
fn optional_files_that_do_not_exist_are_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let (server, settings) = setup(dir.path());
    server.put("owner/repo", "main", "config.json", b"{}");
    let files = open("hf:owner/repo", FetchPolicy::Allow, &settings).unwrap();

    assert_eq!(files.get_optional("generation_config.json").unwrap(), None);
    assert_eq!(server.requests(), 1);
    assert_eq!(server.seen()[0].status, 404);
    // The 404 was recorded in the cache (as Python's huggingface_hub does),
    // so neither an online nor an offline run asks again.
    assert_eq!(files.get_optional("generation_config.json").unwrap(), None);
    let offline = HubSettings {
        offline: true,
        ..settings.clone()
    };
    let off = open("hf:owner/repo", FetchPolicy::Allow, &offline).unwrap();
    assert_eq!(off.get_optional("generation_config.json").unwrap(), None);
    assert_eq!(server.requests(), 1);

    // Required and missing: the error names model, file and repository.
    let err = message(files.get("model.safetensors").unwrap_err());
    for part in ["`m`", "model.safetensors", "owner/repo", "does not exist"] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
    // An existing optional file is downloaded normally.
    assert!(files.get_optional("config.json").unwrap().is_some());
}

#[test]
fn siblings_of_a_named_file_come_from_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (server, settings) = setup(dir.path());
    server.put("owner/gguf", "main", "q4/model.gguf", b"GGUF q4");
    server.put("owner/gguf", "main", "q4/tokenizer.json", b"{\"q4\":1}");
    server.put("owner/gguf", "main", "tokenizer.json", b"{\"root\":1}");
    let files = open("hf:owner/gguf:q4/model.gguf", FetchPolicy::Allow, &settings).unwrap();
    assert_eq!(
        fs::read(files.get("tokenizer.json").unwrap()).unwrap(),
        b"{\"q4\":1}"
    );
}

#[test]
fn unknown_repositories_and_revisions_say_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let (server, settings) = setup(dir.path());
    server.put("owner/repo", "main", "config.json", b"{}");

    let err = message(open("hf:nobody/nothing:m.gguf", FetchPolicy::Allow, &settings).unwrap_err());
    for part in ["`m`", "nobody/nothing", "m.gguf", "HF_TOKEN"] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
    let err = message(
        open(
            "hf:owner/repo@nope:config.json",
            FetchPolicy::Allow,
            &settings,
        )
        .unwrap_err(),
    );
    assert!(err.contains("revision `nope` does not exist"), "{err}");
}

#[test]
fn an_unreachable_hub_suggests_offline_mode() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = HubSettings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        cache_dir: dir.path().join("cache"),
        token: None,
        offline: false,
        progress: false,
    };
    let err = message(open("hf:owner/repo:m.gguf", FetchPolicy::Allow, &settings).unwrap_err());
    assert!(
        err.contains("owner/repo") && err.contains("HF_HUB_OFFLINE=1"),
        "{err}"
    );
}

#[test]
fn an_encoder_decoder_checkpoint_loads_from_the_hub_and_then_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut settings) = setup(dir.path());
    let fixture = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/seq2seq/marian"
    ));
    for f in std::fs::read_dir(fixture).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        if name != "expected.json" {
            server.put(
                "Helsinki-NLP/opus-mt-en-es",
                "main",
                &name,
                &std::fs::read(&f).unwrap(),
            );
        }
    }
    let spec = tidings::config::ModelSpec {
        name: "opus".into(),
        source_text: "hf:Helsinki-NLP/opus-mt-en-es".into(),
        source: ModelSource::parse("hf:Helsinki-NLP/opus-mt-en-es", Path::new(".")).unwrap(),
        prefix: String::new(),
        generation: Default::default(),
        quantize: None,
    };
    let translate = |settings: &HubSettings| {
        let files = open(
            "hf:Helsinki-NLP/opus-mt-en-es",
            FetchPolicy::Allow,
            settings,
        )
        .unwrap();
        let mut m = tidings::models::load_with(&spec, &files, &candle_core::Device::Cpu).unwrap();
        assert!(m.describe().contains("family: marian"), "{}", m.describe());
        let task = tidings::models::Task::Translate {
            from: tidings::text::langid::lookup("en").unwrap(),
            to: tidings::text::langid::lookup("es").unwrap(),
        };
        m.generate(task, "The council met on Monday.", &Default::default())
            .unwrap()
            .output_tokens
    };
    let online = translate(&settings);
    assert!(online > 0);
    let before = server.requests();
    settings.offline = true;
    assert_eq!(translate(&settings), online);
    assert_eq!(server.requests(), before, "offline must not ask the Hub");
}
