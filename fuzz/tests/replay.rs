//! Replays the seed corpus (`corpus/<target>/seed-*`) and the saved crash inputs
//! (`regressions/<target>/*`) through the targets' code, on the stable toolchain and without
//! libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml`.
//!
//! A regression input fails until its bug is fixed; `EVENT_FUZZ_KNOWN=<tag>,...` skips the
//! checks of bugs that are reported and not fixed yet (the README's "Fuzzing" section lists
//! the tags).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("classify", event_fuzz::classify::run),
    ("decode", event_fuzz::decode::run),
    ("amqp_wire", event_fuzz::amqp_wire::run),
    ("gateway", event_fuzz::gateway::run),
    ("nats_headers", event_fuzz::nats_headers::run),
];

/// Runs every file of `dir` (whose name starts with `prefix`) through `target`; the names of
/// those that panicked, with the panic message.
fn replay(dir: &Path, prefix: &str, target: Target) -> (usize, Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, Vec::new());
    };
    let mut files: Vec<_> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            path.is_file()
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && !n.starts_with('.'))
        })
        .collect();
    files.sort();
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("a readable input");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failed.push(format!("{}: {message}", path.display()));
        }
    }
    (files.len(), failed)
}

fn run(kind: &str, prefix: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failed = Vec::new();
    let mut total = 0;
    for (name, target) in TARGETS {
        let (count, failures) = replay(&root.join(kind).join(name), prefix, target);
        total += count;
        failed.extend(failures);
    }
    assert!(
        failed.is_empty(),
        "{} of {total} inputs under {kind}/ fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn the_seed_corpus_passes() {
    run("corpus", "seed-");
}

#[test]
fn the_regression_inputs_pass() {
    run("regressions", "");
}
