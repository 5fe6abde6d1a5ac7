//! Helpers shared by the integration tests (`mod common;` in each test crate).
//!
//! - [`bodflow`]: a `Command` for the binary under test, with quiet logs.
//! - [`xmllint_validate`] / [`xmllint_validate_by_kind`]: schema validation with
//!   `xmllint --schema`, many files per call. `xmllint` is required: the helpers fail with an
//!   install hint when it is missing, they never skip.

// Every test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Files per xmllint call (keeps the command line short).
pub const BATCH: usize = 200;

/// The crate root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `schemas/` of the crate.
pub fn schemas_dir() -> PathBuf {
    root().join("schemas")
}

/// The strict schema of an emitted document kind: `schemas/<kind>.xsd`.
pub fn schema_for_kind(kind: &str) -> PathBuf {
    schemas_dir().join(format!("{kind}.xsd"))
}

/// The `bodflow` binary under test, logging warnings only.
pub fn bodflow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bodflow"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// A document to validate: where it came from (named in problems) and its file.
#[derive(Debug, Clone)]
pub struct ToCheck {
    pub origin: String,
    pub file: PathBuf,
}

impl ToCheck {
    /// A file that is its own origin.
    pub fn file(file: impl Into<PathBuf>) -> ToCheck {
        let file = file.into();
        ToCheck {
            origin: file.display().to_string(),
            file,
        }
    }
}

/// Panics with an install hint unless `xmllint` can be run. Checked once per test binary.
pub fn require_xmllint() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| match Command::new("xmllint").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "xmllint --version failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!(
            "xmllint is required for the schema tests but could not be run ({e}); \
             install it with `apt-get install -y libxml2-utils` (Debian/Ubuntu) or your \
             platform's libxml2 package"
        )),
    });
    if let Err(message) = result {
        panic!("{message}");
    }
}

/// Validates `files` against `schema` with `xmllint --noout --schema`, in batches. Returns
/// xmllint's complaints, each tagged with the file's origin; empty when every file validates.
pub fn xmllint_validate(schema: &Path, files: &[ToCheck]) -> Vec<String> {
    require_xmllint();
    assert!(
        schema.is_file(),
        "schema {} does not exist",
        schema.display()
    );
    let mut problems = Vec::new();
    for chunk in files.chunks(BATCH) {
        let out = Command::new("xmllint")
            .arg("--noout")
            .arg("--schema")
            .arg(schema)
            .args(chunk.iter().map(|c| &c.file))
            .output()
            .expect("running xmllint");
        if out.status.success() {
            continue;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let failing: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.ends_with(" validates"))
            .collect();
        let origins: BTreeMap<String, &str> = chunk
            .iter()
            .map(|c| (c.file.display().to_string(), c.origin.as_str()))
            .collect();
        let before = problems.len();
        for line in failing {
            let origin = origins
                .iter()
                .find(|(file, _)| line.starts_with(file.as_str()))
                .map(|(_, o)| format!(" [from {o}]"))
                .unwrap_or_default();
            problems.push(format!("{line}{origin}"));
        }
        if problems.len() == before {
            problems.push(format!(
                "xmllint exited with {} without naming a file: {stderr}",
                out.status
            ));
        }
    }
    problems
}

/// Validates documents grouped by kind, each against `schema_for(kind)`. A kind without a
/// schema file is a problem too (an emitted kind nobody can check).
pub fn xmllint_validate_by_kind(
    schema_for: impl Fn(&str) -> PathBuf,
    docs: &BTreeMap<String, Vec<ToCheck>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (kind, files) in docs {
        let schema = schema_for(kind);
        if !schema.is_file() {
            problems.push(format!(
                "{} {kind} document(s) but there is no schema {}",
                files.len(),
                schema.display()
            ));
            continue;
        }
        problems.extend(xmllint_validate(&schema, files));
    }
    problems
}

/// The kind of a file written by `replay --out`: `<stem>.<n>.<Kind>.xml` → `Kind`.
pub fn output_kind(file_name: &str) -> Option<&str> {
    let base = file_name.strip_suffix(".xml")?;
    let (rest, kind) = base.rsplit_once('.')?;
    let (_, n) = rest.rsplit_once('.')?;
    (!kind.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(kind)
}

/// The files `replay --out DIR` wrote, grouped by kind. Panics on a name that does not follow
/// `<stem>.<n>.<Kind>.xml`.
pub fn emitted_by_kind(dir: &Path) -> BTreeMap<String, Vec<ToCheck>> {
    let mut by_kind: BTreeMap<String, Vec<ToCheck>> = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let kind = output_kind(&name)
            .unwrap_or_else(|| panic!("{name}: not named <stem>.<n>.<Kind>.xml"))
            .to_string();
        by_kind.entry(kind).or_default().push(ToCheck {
            origin: name,
            file: path,
        });
    }
    by_kind
}

/// Serializes, within one test process, holding a sled store open and spawning a child
/// process. sled locks a store with `flock` on an open file; a child forked while another
/// thread has a store open inherits that descriptor until its `exec`, so the store can stay
/// locked for a moment after the thread closed it — and the next `bodflow` on that store
/// would find it "in use". Hold the guard while a store is open here, and around `spawn()`
/// (which returns once the child has exec'd).
pub fn fork_guard() -> std::sync::MutexGuard<'static, ()> {
    static GUARD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GUARD.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the store at `path` in this process, waiting up to 10 s while it is locked. A child
/// process another test thread forked while sled still had the store's file open (sled closes
/// it from its own threads, a moment after the `Store` is dropped) holds the lock until that
/// child's `exec`; [`fork_guard`] narrows that window, this closes it.
pub fn open_store(path: &Path) -> bodflow::store::Store {
    let start = std::time::Instant::now();
    loop {
        match bodflow::store::Store::open(path) {
            Ok(store) => return store,
            Err(e) if e.is_locked() && start.elapsed() < std::time::Duration::from_secs(10) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("opening {}: {e}", path.display()),
        }
    }
}

/// The store's sled database itself (to damage it as a test needs), waiting as
/// [`open_store`] does for a process that has just closed it to let go of its lock.
pub fn open_sled(path: &Path) -> sled::Db {
    let start = std::time::Instant::now();
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && start.elapsed() < std::time::Duration::from_secs(10) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("opening {}: {e}", path.display()),
        }
    }
}

/// `cmd.output()` with the spawn under [`fork_guard`].
pub fn output_guarded(cmd: &mut Command) -> std::process::Output {
    let child = {
        let _guard = fork_guard();
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    child.wait_with_output().expect("wait")
}

/// [`output_guarded`], run again (for up to 10 s) while it fails only because the store is
/// locked: by a child another test thread forked while sled still had the store's file open
/// (see [`fork_guard`]), which holds the lock until that child's `exec`. A command that finds
/// its store locked has done nothing yet, so running it again is safe.
pub fn output_unlocked(cmd: &mut Command) -> std::process::Output {
    let start = std::time::Instant::now();
    loop {
        let out = output_guarded(cmd);
        let locked = !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("the store is in use by another process");
        if !locked || start.elapsed() > std::time::Duration::from_secs(10) {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Kills a spawned `bodflow run` (by pid) when the test panics before it stops the service
/// itself, so a failed test leaves no service behind retrying a deleted vhost.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}
