//! Where a model's files come from: a Hugging Face Hub repository (`hf:`), a
//! local file or folder (`path:`), or a model of the package catalogue
//! (`pkg:`, see [`packages`]). [`ModelSource`] is what a job config says;
//! [`ModelFiles`] hands out the files, wherever they live.
//!
//! Hub downloads go through hf-hub's blocking API (ureq). It is what candle's
//! own examples use, and it keeps tokio out of a batch tool that has no other
//! use for an async runtime. We follow hf-hub's and Python `huggingface_hub`'s
//! conventions, so the cache is shared with Python tools:
//! - cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//!   `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`;
//! - endpoint: `$HF_ENDPOINT` (a mirror), else hf-hub's default;
//! - token: `$HF_TOKEN`, else the file `$HF_TOKEN_PATH` or `$HF_HOME/token`;
//! - `HF_HUB_OFFLINE=1` (or true/yes/on): no request at all, files come from
//!   the cache only, and a miss is an error naming repo, revision and file.
//!   [`FetchPolicy::CacheOnly`] does the same for commands that must not
//!   download (e.g. `tidings validate`).
//!
//! A file already in the cache for the requested revision is used without
//! asking the Hub again (as hf-hub's `get` and candle do), so a second run
//! makes no request. A branch that moved upstream is therefore not noticed:
//! pin `@revision` to a commit for reproducible jobs, or clear the cache.
//! When the Hub says an optional file (e.g. `generation_config.json`) does
//! not exist, we record that in the cache as Python does
//! (`.no_exist/COMMIT/FILE`), so later runs, online or offline, know without
//! asking. Proxies come from `HTTP(S)_PROXY`; hf-hub's ureq 2 does not read
//! `NO_PROXY`.

use std::fmt;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};
use crate::models::packages::{self, Content, Store};

/// Where a model comes from, as written in `[models.NAME] source = "..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `hf:owner/repo[@revision][:file]`.
    Hub {
        /// Repository id, `owner/name` (or a legacy one-part id such as `gpt2`).
        repo: String,
        /// Branch, tag or commit; `None` means `main`.
        revision: Option<String>,
        /// One file of the repository (a GGUF checkpoint), path inside the repo.
        file: Option<String>,
    },
    /// `path:DIR_OR_FILE`, already joined to the config file's folder.
    Path(PathBuf),
    /// `pkg:NAME`, a name from [`packages::catalogue`].
    Package(String),
}

const FORMS: &str = "expected `hf:owner/repo[@revision][:file]`, `path:DIR_OR_FILE` \
                     (relative to the config file's folder) or `pkg:NAME`";

impl ModelSource {
    /// Parses `hf:owner/repo[@revision][:file]`, `path:DIR_OR_FILE` (relative
    /// to `base_dir`, the config file's folder; a leading `~/` is the home
    /// folder) or `pkg:NAME` (a model from the package catalogue). Nothing is
    /// read or fetched here. The error explains the accepted forms.
    pub fn parse(s: &str, base_dir: &Path) -> std::result::Result<Self, String> {
        if let Some(rest) = s.strip_prefix("hf:") {
            parse_hub(rest).map_err(|why| format!("invalid source `{s}`: {why}"))
        } else if let Some(rest) = s.strip_prefix("path:") {
            if rest.is_empty() {
                return Err(format!(
                    "invalid source `{s}`: `path:` needs a file or folder"
                ));
            }
            let path = match rest.strip_prefix("~/").zip(dirs::home_dir()) {
                Some((tail, home)) => home.join(tail),
                None => base_dir.join(rest),
            };
            Ok(ModelSource::Path(path))
        } else if let Some(rest) = s.strip_prefix("pkg:") {
            match packages::find(rest) {
                Some(m) => Ok(ModelSource::Package(m.name.to_string())),
                None => Err(format!(
                    "invalid source `{s}`: no packaged model `{rest}`; known: {}",
                    packages::names()
                )),
            }
        } else {
            let hint = if s.ends_with(".gguf") || s.starts_with(['.', '/', '~']) {
                format!("; did you mean `path:{s}`?")
            } else if parse_hub(s).is_ok() && s.contains('/') {
                format!("; did you mean `hf:{s}`?")
            } else {
                String::new()
            };
            Err(format!("unknown model source `{s}`: {FORMS}{hint}"))
        }
    }
}

/// Parses what follows `hf:`.
fn parse_hub(rest: &str) -> std::result::Result<ModelSource, String> {
    // Git refs cannot contain `:`, so the first one starts the file name.
    let (repo_rev, file) = match rest.split_once(':') {
        Some((a, f)) => (a, Some(f)),
        None => (rest, None),
    };
    let (repo, revision) = match repo_rev.split_once('@') {
        Some((r, v)) => (r, Some(v)),
        None => (repo_rev, None),
    };
    let segments: Vec<&str> = repo.split('/').collect();
    let segment_ok = |s: &&str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && !s.contains("..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if segments.len() > 2 || !segments.iter().all(segment_ok) {
        return Err(format!(
            "`{repo}` is not a repository id like `owner/name` (letters, digits, `-`, `_`, `.`)"
        ));
    }
    if let Some(rev) = revision {
        if rev.is_empty() || rev.contains(char::is_whitespace) || rev.contains("..") {
            return Err(format!(
                "`{rev}` is not a revision (a branch, tag or commit)"
            ));
        }
    }
    if let Some(f) = file {
        let bad = f.is_empty()
            || f.starts_with('/')
            || f.contains('\\')
            || f.split('/').any(|c| c.is_empty() || c == "." || c == "..");
        if bad {
            return Err(format!("`{f}` is not a file path inside the repository"));
        }
    }
    Ok(ModelSource::Hub {
        repo: repo.to_string(),
        revision: revision.map(str::to_string),
        file: file.map(str::to_string),
    })
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Hub {
                repo,
                revision,
                file,
            } => {
                write!(f, "hf:{repo}")?;
                if let Some(r) = revision {
                    write!(f, "@{r}")?;
                }
                if let Some(file) = file {
                    write!(f, ":{file}")?;
                }
                Ok(())
            }
            ModelSource::Path(p) => write!(f, "path:{}", p.display()),
            ModelSource::Package(name) => write!(f, "pkg:{name}"),
        }
    }
}

/// Whether missing files may be downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchPolicy {
    /// Download what is not cached (`tidings run`, `tidings models fetch`).
    Allow,
    /// Use the caches only; a missing file is an error that says how to fetch it.
    CacheOnly,
}

/// How to reach the Hub and where its cache is. [`HubSettings::from_env`]
/// reads the usual environment variables; tests build one by hand so they
/// need not touch the process environment.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Base URL of the Hub or a mirror, without a trailing `/`; `None` is
    /// hf-hub's default.
    pub endpoint: Option<String>,
    /// The hf-hub cache folder (the one holding `models--owner--name`).
    pub cache_dir: PathBuf,
    /// Access token for private and gated repositories.
    pub token: Option<String>,
    /// Never make a request; read the cache only.
    pub offline: bool,
    /// Draw hf-hub's progress bars on stderr.
    pub progress: bool,
}

impl HubSettings {
    /// Settings from `HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HOME`,
    /// `XDG_CACHE_HOME`, `HF_TOKEN`, `HF_TOKEN_PATH` and `HF_HUB_OFFLINE`;
    /// progress bars only when stderr is a terminal.
    pub fn from_env() -> Self {
        let mut settings = Self::from_vars(|k| std::env::var(k).ok());
        settings.progress = std::io::stderr().is_terminal();
        settings
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let home = dirs::home_dir().unwrap_or_default();
        let expand = |v: String| match v.strip_prefix("~/") {
            Some(tail) => home.join(tail),
            None => PathBuf::from(v),
        };
        let hf_home = get("HF_HOME").map(expand).unwrap_or_else(|| {
            get("XDG_CACHE_HOME")
                .map(expand)
                .unwrap_or_else(|| home.join(".cache"))
                .join("huggingface")
        });
        let cache_dir = get("HF_HUB_CACHE")
            .map(expand)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = get("HF_TOKEN").or_else(|| {
            let path = get("HF_TOKEN_PATH")
                .map(expand)
                .unwrap_or_else(|| hf_home.join("token"));
            fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = get("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        HubSettings {
            endpoint: get("HF_ENDPOINT").map(|e| e.trim_end_matches('/').to_string()),
            cache_dir,
            token,
            offline,
            progress: false,
        }
    }
}

/// The files of one model, wherever they live.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    name: String,
    id: String,
    primary: Option<PathBuf>,
    place: Place,
}

#[derive(Debug, Clone)]
enum Place {
    /// A local folder: `path:` sources and fetched packages.
    Dir(PathBuf),
    /// A Hub repository, fetched file by file.
    Hub(HubRepo),
}

impl ModelFiles {
    /// Resolves `source` for the model called `name` in the job (`name`
    /// appears in every error): a `path:` must exist; a `pkg:` comes from the
    /// package cache, fetched first when missing and `policy` allows; an `hf:`
    /// source with a file fetches that file now, other Hub files on first
    /// [`ModelFiles::get`]. Settings come from the environment.
    pub fn open(name: &str, source: &ModelSource, policy: FetchPolicy) -> Result<Self> {
        Self::open_with(
            name,
            source,
            policy,
            &HubSettings::from_env(),
            &Store::from_env(),
        )
    }

    /// [`ModelFiles::open`] with explicit Hub settings and package store.
    pub fn open_with(
        name: &str,
        source: &ModelSource,
        policy: FetchPolicy,
        hub: &HubSettings,
        store: &Store,
    ) -> Result<Self> {
        match source {
            ModelSource::Path(path) => open_path(name, path),
            ModelSource::Package(pkg) => open_package(name, pkg, policy, store),
            ModelSource::Hub {
                repo,
                revision,
                file,
            } => {
                let revision = revision.clone().unwrap_or_else(|| "main".to_string());
                let folder = match file.as_deref().and_then(|f| f.rsplit_once('/')) {
                    Some((dir, _)) => format!("{dir}/"),
                    None => String::new(),
                };
                let hub_repo = HubRepo {
                    settings: hub.clone(),
                    repo: repo.clone(),
                    revision: revision.clone(),
                    folder,
                    cache_only: hub.offline || policy == FetchPolicy::CacheOnly,
                };
                let primary = match file {
                    Some(f) => hub_repo.fetch(name, f, true)?,
                    None => None,
                };
                let mut id = format!("{repo}@{revision}");
                if let Some(f) = file {
                    id.push(':');
                    id.push_str(f);
                }
                Ok(ModelFiles {
                    name: name.to_string(),
                    id,
                    primary,
                    place: Place::Hub(hub_repo),
                })
            }
        }
    }

    /// The single file the source names (a GGUF file given by
    /// `path:file.gguf`, `hf:repo:file.gguf`, or a package that is one file).
    pub fn primary(&self) -> Option<&Path> {
        self.primary.as_deref()
    }

    /// A file of the model by name: `DIR/file` for a folder source, the
    /// sibling in the same folder for a single-file source, downloaded from
    /// the repository (same folder as the named file) for `hf:`. The error
    /// names the model and the file.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        match self.lookup(file, true)? {
            Some(path) => Ok(path),
            // `lookup` reports required files itself; this is a fallback.
            None => Err(self.missing(file)),
        }
    }

    /// Like [`ModelFiles::get`], but `Ok(None)` when the file does not exist
    /// (optional files such as `tokenizer.json` or `generation_config.json`).
    /// Offline, a file that was never fetched counts as absent (with a
    /// warning), since the Hub cannot be asked.
    pub fn get_optional(&self, file: &str) -> Result<Option<PathBuf>> {
        self.lookup(file, false)
    }

    /// A short id for output records' `meta.models`: `owner/repo@revision`
    /// (with `:file` for a single-file Hub source), the package name, or the
    /// file or folder name of a path.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The model's name in the job.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, file: &str, required: bool) -> Result<Option<PathBuf>> {
        match &self.place {
            Place::Dir(dir) => {
                let path = dir.join(file);
                if path.exists() {
                    Ok(Some(path))
                } else if required {
                    Err(self.missing(file))
                } else {
                    Ok(None)
                }
            }
            Place::Hub(repo) => repo.fetch(&self.name, &format!("{}{file}", repo.folder), required),
        }
    }

    fn missing(&self, file: &str) -> Error {
        let place = match &self.place {
            Place::Dir(dir) => format!("`{}`", dir.display()),
            Place::Hub(r) => format!("`{}` at revision `{}`", r.repo, r.revision),
        };
        Error::ModelSource {
            model: self.name.clone(),
            message: format!("`{file}` not found in {place}"),
        }
    }
}

fn open_path(name: &str, path: &Path) -> Result<ModelFiles> {
    let meta = fs::metadata(path).map_err(|e| Error::ModelSource {
        model: name.to_string(),
        message: format!(
            "`{}` cannot be read ({e}); `path:` sources are relative to the config file's folder",
            path.display()
        ),
    })?;
    let id = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let (dir, primary) = if meta.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (dir, Some(path.to_path_buf()))
    };
    Ok(ModelFiles {
        name: name.to_string(),
        id,
        primary,
        place: Place::Dir(dir),
    })
}

fn open_package(name: &str, pkg: &str, policy: FetchPolicy, store: &Store) -> Result<ModelFiles> {
    let model = packages::find(pkg).ok_or_else(|| Error::ModelSource {
        model: name.to_string(),
        message: format!("no packaged model `{pkg}`; known: {}", packages::names()),
    })?;
    let path = if store.is_cached(model) {
        store.path(model)
    } else if policy == FetchPolicy::Allow {
        tracing::info!("model `{name}`: fetching packaged model `{pkg}`");
        store.fetch(model)?
    } else {
        return Err(Error::ModelSource {
            model: name.to_string(),
            message: format!(
                "packaged model `{pkg}` is not in the cache `{}`; run `tidings models fetch \
                 --config <job.toml>` first",
                store.root().display()
            ),
        });
    };
    let (dir, primary) = match model.content {
        Content::File { .. } => (
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
            Some(path),
        ),
        Content::Dir { .. } => (path, None),
    };
    Ok(ModelFiles {
        name: name.to_string(),
        id: model.name.to_string(),
        primary,
        place: Place::Dir(dir),
    })
}

/// One repository at one revision.
#[derive(Debug, Clone)]
struct HubRepo {
    settings: HubSettings,
    repo: String,
    revision: String,
    /// Folder (with trailing `/`, or empty) that sibling files are taken from.
    folder: String,
    /// Offline, or a command that must not download.
    cache_only: bool,
}

/// What the cache knows about a file.
enum Cached {
    Found(PathBuf),
    /// The Hub said it does not exist at this commit.
    Absent,
    Unknown,
}

/// What an HTTP error response of the Hub said.
struct Refusal {
    status: u16,
    code: Option<String>,
    message: Option<String>,
    commit: Option<String>,
}

impl HubRepo {
    fn hf_repo(&self) -> Repo {
        Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone())
    }

    fn repo_dir(&self) -> PathBuf {
        self.settings.cache_dir.join(self.hf_repo().folder_name())
    }

    /// The commit the cache maps our revision to.
    fn cached_commit(&self) -> Option<String> {
        // Python's cache keeps no ref for a revision that is itself a commit.
        if self.revision.len() == 40 && self.revision.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(self.revision.clone());
        }
        let text = fs::read_to_string(self.repo_dir().join("refs").join(&self.revision)).ok()?;
        Some(text.trim().to_string()).filter(|c| !c.is_empty())
    }

    /// Looks `file` up in the cache without any request.
    fn cached(&self, file: &str) -> Cached {
        let cache = Cache::new(self.settings.cache_dir.clone());
        if let Some(path) = cache.repo(self.hf_repo()).get(file) {
            return Cached::Found(path);
        }
        let Some(commit) = self.cached_commit() else {
            return Cached::Unknown;
        };
        let repo_dir = self.repo_dir();
        let snapshot = repo_dir.join("snapshots").join(&commit).join(file);
        if snapshot.exists() {
            Cached::Found(snapshot)
        } else if repo_dir.join(".no_exist").join(&commit).join(file).exists() {
            Cached::Absent
        } else {
            Cached::Unknown
        }
    }

    /// Records that `file` does not exist at `commit`, as Python does.
    fn remember_absent(&self, commit: &str, file: &str) {
        let repo_dir = self.repo_dir();
        let marker = repo_dir.join(".no_exist").join(commit).join(file);
        let written = marker
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|_| fs::write(&marker, b""));
        // The ref lets an offline run find the marker. An existing ref is
        // left alone: moving it would hide the files cached for it.
        let reference = repo_dir.join("refs").join(&self.revision);
        let referenced = if reference.exists() {
            Ok(())
        } else {
            reference
                .parent()
                .map_or(Ok(()), fs::create_dir_all)
                .and_then(|_| fs::write(&reference, commit))
        };
        if let Err(e) = written.and(referenced) {
            // Only an optimisation: the Hub will be asked again next time.
            tracing::debug!("cannot record that `{file}` is absent: {e}");
        }
    }

    /// The path of `file` (a path inside the repository), from the cache or
    /// downloaded. `Ok(None)` when it does not exist and is not `required`.
    fn fetch(&self, model: &str, file: &str, required: bool) -> Result<Option<PathBuf>> {
        let not_found = |how: &str| Error::ModelSource {
            model: model.to_string(),
            message: format!(
                "`{file}` does not exist in `{}` at revision `{}`{how}",
                self.repo, self.revision
            ),
        };
        match self.cached(file) {
            Cached::Found(path) => return Ok(Some(path)),
            Cached::Absent if required => {
                return Err(not_found(" (recorded in the Hugging Face cache)"))
            }
            Cached::Absent => return Ok(None),
            Cached::Unknown => {}
        }
        if self.cache_only {
            let why = if self.settings.offline {
                "HF_HUB_OFFLINE is set, so nothing is downloaded; fetch it once online \
                 (e.g. `tidings models fetch --config <job.toml>`) or unset HF_HUB_OFFLINE"
            } else {
                "this command does not download; run `tidings models fetch --config <job.toml>` \
                 first"
            };
            if !required {
                tracing::warn!(
                    "model `{model}`: optional `{file}` of `{}` at revision `{}` is not in the \
                     Hugging Face cache; going on without it",
                    self.repo,
                    self.revision
                );
                return Ok(None);
            }
            return Err(Error::ModelSource {
                model: model.to_string(),
                message: format!(
                    "`{file}` of `{}` at revision `{}` is not in the Hugging Face cache `{}`: {why}",
                    self.repo,
                    self.revision,
                    self.settings.cache_dir.display()
                ),
            });
        }
        tracing::info!(
            "model `{model}`: downloading `{file}` from `{}@{}`",
            self.repo,
            self.revision
        );
        let fail = |source: ApiError, hint: String| Error::HubFile {
            model: model.to_string(),
            repo: format!("{}@{}", self.repo, self.revision),
            file: file.to_string(),
            hint,
            source: Box::new(source),
        };
        let mut builder = ApiBuilder::from_cache(Cache::new(self.settings.cache_dir.clone()))
            .with_token(self.settings.token.clone())
            .with_progress(self.settings.progress)
            .with_user_agent("tidings", env!("CARGO_PKG_VERSION"))
            // Resumes a broken transfer of a large file instead of failing.
            .with_retries(3);
        if let Some(endpoint) = &self.settings.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder.build().map_err(|e| fail(e, String::new()))?;
        let err = match api.repo(self.hf_repo()).download(file) {
            Ok(path) => return Ok(Some(path)),
            Err(e) => e,
        };
        let (err, refusal) = refusal(err);
        let Some(r) = refusal else {
            let hint = ": the Hub could not be reached; with the files already cached, set \
                        HF_HUB_OFFLINE=1"
                .to_string();
            return Err(fail(err, hint));
        };
        let code = r.code.as_deref().unwrap_or("");
        let said = r
            .message
            .as_deref()
            .map(|m| format!(" (the Hub says: {m})"))
            .unwrap_or_default();
        let hint = match (r.status, code) {
            (_, "RevisionNotFound") => {
                format!(": revision `{}` does not exist{said}", self.revision)
            }
            (401 | 403, _) | (_, "RepoNotFound" | "GatedRepo") => format!(
                ": the repository does not exist, is private, or is gated; check its name, and \
                 set HF_TOKEN to a token that has access{said}"
            ),
            (404, _) => {
                if !required {
                    if let Some(commit) = &r.commit {
                        self.remember_absent(commit, file);
                    }
                    return Ok(None);
                }
                format!(": the file does not exist in the repository at this revision{said}")
            }
            (status, _) => format!(": the Hub answered HTTP {status}{said}"),
        };
        Err(fail(err, hint))
    }
}

/// Splits an HTTP error response of the Hub (status and its `X-Error-*`
/// headers) from other failures, handing the error back intact.
fn refusal(err: ApiError) -> (ApiError, Option<Refusal>) {
    match err {
        // We have no direct dependency on ureq (hf-hub's HTTP client), so its
        // error enum cannot be matched by name; `kind()` tells a status
        // error, and `From<Response>` rebuilds the error after we read it.
        ApiError::RequestError(e) if format!("{:?}", e.kind()) == "HTTP" => {
            match (*e).into_response() {
                Some(resp) => {
                    let header = |h: &str| resp.header(h).map(str::to_string);
                    let refusal = Refusal {
                        status: resp.status(),
                        code: header("x-error-code"),
                        message: header("x-error-message"),
                        commit: header("x-repo-commit"),
                    };
                    (ApiError::RequestError(Box::new(resp.into())), Some(refusal))
                }
                // Unreachable: an HTTP-kind error always carries a response.
                None => (ApiError::InvalidHeader("status"), None),
            }
        }
        other => (other, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> std::result::Result<ModelSource, String> {
        ModelSource::parse(s, Path::new("conf"))
    }

    fn hub(repo: &str, revision: Option<&str>, file: Option<&str>) -> ModelSource {
        ModelSource::Hub {
            repo: repo.into(),
            revision: revision.map(Into::into),
            file: file.map(Into::into),
        }
    }

    #[test]
    fn parses_hub_sources() {
        let cases = [
            (
                "hf:Helsinki-NLP/opus-mt-en-es",
                hub("Helsinki-NLP/opus-mt-en-es", None, None),
            ),
            (
                "hf:google/flan-t5-small@v1.0",
                hub("google/flan-t5-small", Some("v1.0"), None),
            ),
            (
                "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf",
                hub(
                    "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
                    None,
                    Some("qwen2.5-0.5b-instruct-q4_k_m.gguf"),
                ),
            ),
            (
                "hf:o/r@refs/pr/1:sub/dir/m.gguf",
                hub("o/r", Some("refs/pr/1"), Some("sub/dir/m.gguf")),
            ),
            ("hf:gpt2", hub("gpt2", None, None)),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_hub_sources() {
        for bad in [
            "hf:",
            "hf:a/b/c",
            "hf:/repo",
            "hf:owner/",
            "hf:owner/re po",
            "hf:o/r@",
            "hf:o/r:",
            "hf:o/r:/abs.gguf",
            "hf:o/r:../x.gguf",
            "hf:o/r:a//b",
            "hf:o/..",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_path_and_package_sources() {
        assert_eq!(
            parse("path:models/q.gguf").unwrap(),
            ModelSource::Path(PathBuf::from("conf/models/q.gguf"))
        );
        assert_eq!(
            parse("path:/abs/dir").unwrap(),
            ModelSource::Path(PathBuf::from("/abs/dir"))
        );
        if let Some(home) = dirs::home_dir() {
            assert_eq!(
                parse("path:~/m").unwrap(),
                ModelSource::Path(home.join("m"))
            );
        }
        assert_eq!(
            parse("pkg:smollm2-135m-instruct").unwrap(),
            ModelSource::Package("smollm2-135m-instruct".into())
        );
        let err = parse("pkg:smollm3").unwrap_err();
        assert!(
            err.contains("smollm3") && err.contains("qwen2.5-coder-1.5b-instruct"),
            "{err}"
        );
        assert!(parse("path:").is_err());
    }

    #[test]
    fn unknown_prefix_lists_forms_and_guesses() {
        let err = parse("Helsinki-NLP/opus-mt-en-es").unwrap_err();
        assert!(
            err.contains("hf:owner/repo") && err.contains("pkg:NAME"),
            "{err}"
        );
        assert!(
            err.contains("did you mean `hf:Helsinki-NLP/opus-mt-en-es`"),
            "{err}"
        );
        let err = parse("models/q.gguf").unwrap_err();
        assert!(err.contains("did you mean `path:models/q.gguf`"), "{err}");
        let err = parse("https://example.org/x").unwrap_err();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn settings_follow_the_python_conventions() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = HubSettings::from_vars(vars(&[
            ("HF_HOME", "/h"),
            ("HF_ENDPOINT", "http://mirror.local/"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_TOKEN", "hf_x"),
        ]));
        assert_eq!(s.cache_dir, PathBuf::from("/h/hub"));
        assert_eq!(s.endpoint.as_deref(), Some("http://mirror.local"));
        assert!(s.offline);
        assert_eq!(s.token.as_deref(), Some("hf_x"));

        let s = HubSettings::from_vars(vars(&[
            ("HF_HOME", "/h"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_HUB_OFFLINE", "0"),
            ("HF_TOKEN_PATH", "/nonexistent/token"),
        ]));
        assert_eq!(s.cache_dir, PathBuf::from("/c"));
        assert!(!s.offline && s.token.is_none() && s.endpoint.is_none());

        let s =
            HubSettings::from_vars(vars(&[("XDG_CACHE_HOME", "/x"), ("HF_HUB_OFFLINE", "YES")]));
        assert_eq!(s.cache_dir, PathBuf::from("/x/huggingface/hub"));
        assert!(s.offline);
    }

    fn no_hub() -> HubSettings {
        HubSettings {
            endpoint: Some("http://127.0.0.1:9".into()),
            cache_dir: PathBuf::from("/nonexistent"),
            token: None,
            offline: true,
            progress: false,
        }
    }

    #[test]
    fn path_sources_give_files_and_siblings() {
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("minilm");
        fs::create_dir(&model_dir).unwrap();
        fs::write(model_dir.join("config.json"), "{}").unwrap();
        fs::write(dir.path().join("q.gguf"), "GGUF").unwrap();
        fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        let store = Store::new(dir.path().join("pkgs"));
        let open = |s: &str| {
            let source = ModelSource::parse(s, dir.path()).unwrap();
            ModelFiles::open_with("m", &source, FetchPolicy::CacheOnly, &no_hub(), &store)
        };

        let folder = open("path:minilm").unwrap();
        assert_eq!(folder.id(), "minilm");
        assert_eq!(folder.primary(), None);
        assert_eq!(
            folder.get("config.json").unwrap(),
            model_dir.join("config.json")
        );
        assert_eq!(folder.get_optional("generation_config.json").unwrap(), None);
        let err = folder.get("model.safetensors").unwrap_err().to_string();
        assert!(
            err.contains("`m`") && err.contains("model.safetensors"),
            "{err}"
        );

        let single = open("path:q.gguf").unwrap();
        assert_eq!(single.id(), "q.gguf");
        assert_eq!(single.primary(), Some(dir.path().join("q.gguf").as_path()));
        assert_eq!(
            single.get_optional("tokenizer.json").unwrap(),
            Some(dir.path().join("tokenizer.json"))
        );

        let err = open("path:missing.gguf").unwrap_err().to_string();
        assert!(err.contains("`m`") && err.contains("missing.gguf"), "{err}");
    }

    #[test]
    fn packages_are_not_fetched_when_the_policy_forbids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let source = ModelSource::Package("gemma3-270m".into());
        let err = ModelFiles::open_with("g", &source, FetchPolicy::CacheOnly, &no_hub(), &store)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`g`") && err.contains("gemma3-270m"), "{err}");
        assert!(err.contains("tidings models fetch --config"), "{err}");
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn cached_packages_open_without_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        // Fake a verified cache entry of the right size; `is_cached` trusts
        // the marker and the size, which is the point of the marker.
        let model = packages::find("smollm2-135m-instruct").unwrap();
        let Content::File {
            file_name,
            size,
            sha256,
            ..
        } = &model.content
        else {
            panic!("smollm2 is one file")
        };
        let path = store.path(model);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::File::create(&path).unwrap().set_len(*size).unwrap();
        fs::write(
            path.with_file_name(format!("{file_name}.sha256")),
            format!("{sha256}  {file_name}\n"),
        )
        .unwrap();
        let source = ModelSource::Package(model.name.into());
        let files =
            ModelFiles::open_with("s", &source, FetchPolicy::CacheOnly, &no_hub(), &store).unwrap();
        assert_eq!(files.primary(), Some(path.as_path()));
        assert_eq!(files.id(), "smollm2-135m-instruct");
        assert_eq!(files.get_optional("tokenizer.json").unwrap(), None);
    }
}
