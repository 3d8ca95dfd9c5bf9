//! drkit: the engine room shared by `worker` (takes backups) and `kubectl-dr` (lists, verifies,
//! restores them).
//!
//! Data flows through the modules in this order:
//!
//! ```text
//! engine::<db>::dump ─► pipeline::encode (zstd ─► age ─► sha256) ─► store::{s3,local}
//!                                                                   │
//! catalog (ids, manifest.json = the commit, listing) ◄──────────────┘
//! store ─► pipeline::decode (sha256 check ─► age -d ─► zstd -d) ─► engine::<db>::restore
//! ```
//!
//! - [`catalog`]: backup ids, the manifest format and the listing of complete backups.
//! - [`store`]: where ciphertext lives; one trait split by capability, S3 and a local directory.
//! - [`pipeline`]: the streaming stages between a database and a store, and the age keys.
//! - [`engine`]: one module per database; each knows how to dump, restore and count.
//! - [`verify`]: integrity checks and count comparison, shared by `verify` and `restore`.
//! - [`rebuild`]: the order of work of every restore, and of many at once (`restore --all`,
//!   `worker drill`).
//! - [`rekey`]: re-encrypting backups to new recipients, streamed, never unrestorable.
//! - [`copy`]: `worker copy`, backups copied as stored into a second store (3-2-1).
//! - [`drill`]: `worker drill`, the scheduled restore into scratch destinations.
//! - [`observe`]: metrics for a Prometheus Pushgateway and a dead man's switch ping.
//! - [`progress`]: a small reporting trait so the plugin can draw bars while `worker` stays quiet.
//! - [`shutdown`]: the cancellation signal that turns SIGTERM into aborted uploads.
//! - [`args`]: the flags a backup shares (recipients, compression, Object Lock, signing).
//! - [`cli`]: what the binaries share at their edge: the store and key flags, exit codes,
//!   logging.
//!
//! ## Floors
//!
//! A module may use modules on its own floor or below, never above: the store knows no
//! manifest, the pipeline no engine, the engines no drill. A test (`layers` below) reads
//! every `crate::` path in `src/` and fails on one that points up, naming the rule.
//!
//! | floor | modules |
//! |---|---|
//! | 0 | `store`, `progress`, `shutdown` |
//! | 1 | `catalog` |
//! | 2 | `pipeline`, `retention` |
//! | 3 | `verify`, `args` |
//! | 4 | `engine` |
//! | 5 | `rebuild`, `rekey`, `copy`, `drill`, `observe`, `cli` |
//!
//! What a lower floor needs from a higher one is passed in (the engines' content checks
//! reach `verify` as [`verify::Decrypt`]), not imported.

#![deny(missing_docs)]

pub mod args;
pub mod catalog;
pub mod cli;
pub mod copy;
pub mod drill;
pub mod engine;
pub mod observe;
pub mod pipeline;
pub mod progress;
pub mod rebuild;
pub mod rekey;
pub mod retention;
pub mod shutdown;
pub mod store;
pub mod verify;

/// Version recorded in every manifest, so a restore can tell which tool wrote a backup.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod layers {
    //! The floors of the module doc, checked on the source.

    /// Each top-level module's floor (the table in the module doc).
    const FLOORS: &[(&str, u8)] = &[
        ("store", 0),
        ("progress", 0),
        ("shutdown", 0),
        ("catalog", 1),
        ("pipeline", 2),
        ("retention", 2),
        ("verify", 3),
        ("args", 3),
        ("engine", 4),
        ("rebuild", 5),
        ("rekey", 5),
        ("copy", 5),
        ("drill", 5),
        ("observe", 5),
        ("cli", 5),
    ];

    fn floor(module: &str) -> Option<u8> {
        FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
    }

    /// Every `crate::<module>` named in code (comments and the item after each
    /// `#[cfg(test)]` left out: tests may reach anywhere) of a file's text.
    fn uses(text: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        // Inside a test item: its brace depth, once it opened.
        let mut test_item: Option<i32> = None;
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if line.trim_start().starts_with("#[cfg(test)]") {
                test_item = Some(0);
                continue;
            }
            if let Some(depth) = test_item.as_mut() {
                let opened = *depth > 0 || code.contains('{');
                *depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
                if *depth <= 0 && (opened || code.trim_end().ends_with(';')) {
                    test_item = None;
                }
                continue;
            }
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push((n + 1, name));
            }
        }
        out
    }

    fn upward_imports(root: &std::path::Path) -> Vec<String> {
        let mut problems = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src readable") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let rel = path.strip_prefix(root).expect("under src");
                let first = rel.components().next().expect("a component");
                let module = first
                    .as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string();
                if module == "lib" || module == "main" {
                    continue;
                }
                let Some(own) = floor(&module) else {
                    problems.push(format!(
                        "{}: module `{module}` has no floor: add it to the table in lib.rs",
                        rel.display()
                    ));
                    continue;
                };
                let text = std::fs::read_to_string(&path).expect("readable");
                for (line, used) in uses(&text) {
                    match floor(&used) {
                        Some(f) if f > own => problems.push(format!(
                            "{}:{line}: `{module}` (floor {own}) uses `crate::{used}` (floor {f}): a module may use its own floor or below; move the piece down or pass it in",
                            rel.display()
                        )),
                        _ => {}
                    }
                }
            }
        }
        problems.sort();
        problems
    }

    #[test]
    fn no_module_uses_a_higher_floor() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let problems = upward_imports(&root);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn an_upward_import_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pipeline")).unwrap();
        std::fs::write(
            dir.path().join("pipeline/mod.rs"),
            "//! doc naming crate::engine is fine\nuse crate::engine::stall_timeout;\n#[cfg(test)]\nuse crate::drill::x;\n#[cfg(test)]\nmod tests {\n    use crate::cli::y;\n}\npub use crate::rebuild::z;\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("store.rs"),
            "use crate::catalog::BackupRef;\n",
        )
        .unwrap();
        let problems = upward_imports(dir.path());
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[1].contains("pipeline/mod.rs:9: `pipeline` (floor 2) uses `crate::rebuild`"),
            "{problems:?}"
        );
        assert!(
            problems[0]
                .contains("pipeline/mod.rs:2: `pipeline` (floor 2) uses `crate::engine` (floor 4)"),
            "{problems:?}"
        );
        assert!(
            problems[2].contains("store.rs:1: `store` (floor 0) uses `crate::catalog` (floor 1)"),
            "{problems:?}"
        );
    }
}
