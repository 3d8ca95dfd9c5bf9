//! Every command's `-h` and `--help`, as a user sees them: no line past 100 columns (a
//! terminal's width), and `-h` on one screen (60 lines): the common flags and the pointer
//! to `--help`, where the rest is.

use dr_tests::*;

/// Every command of both binaries, as argv after the binary.
const COMMANDS: &[(&str, &[&str])] = &[
    ("kubectl-dr", &[]),
    ("kubectl-dr", &["list"]),
    ("kubectl-dr", &["verify"]),
    ("kubectl-dr", &["restore"]),
    ("kubectl-dr", &["status"]),
    ("kubectl-dr", &["backup"]),
    ("kubectl-dr", &["prune"]),
    ("kubectl-dr", &["rekey"]),
    ("worker", &[]),
    ("worker", &["backup"]),
    ("worker", &["backup", "postgres"]),
    ("worker", &["backup", "vault"]),
    ("worker", &["backup", "clickhouse"]),
    ("worker", &["backup", "command"]),
    ("worker", &["backup", "redis"]),
    ("worker", &["backup", "kubernetes"]),
    ("worker", &["prune"]),
    ("worker", &["drill"]),
];

#[test]
fn every_help_fits_a_terminal_and_short_help_fits_a_screen() {
    let mut problems = Vec::new();
    for (bin, args) in COMMANDS {
        for flag in ["-h", "--help"] {
            let mut argv = args.to_vec();
            argv.push(flag);
            let out = run(bin, &argv, &[]);
            let shown = format!("{bin} {} {flag}", args.join(" "));
            assert_eq!(code(&out), 0, "{shown}: {}", stderr(&out));
            let text = stdout(&out);
            for line in text.lines() {
                let width = line.chars().count();
                if width > 100 {
                    problems.push(format!("{shown}: {width} columns: {line}"));
                }
            }
            let lines = text.lines().count();
            if flag == "-h" && lines > 60 {
                problems.push(format!("{shown}: {lines} lines"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn help_headings_hold_what_they_name() {
    let out = run("kubectl-dr", &["restore", "--help"], &[]);
    let text = stdout(&out);
    let section = |heading: &str| -> String {
        text.split(&format!("\n{heading}:\n"))
            .nth(1)
            .map(|rest| rest.split("\n\n").next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let kubernetes = section("Kubernetes");
    for flag in [
        "--output",
        "--in-cluster",
        "--kubeconfig",
        "--namespace <NS>",
    ] {
        assert!(
            !kubernetes.contains(flag),
            "{flag} under Kubernetes:\n{kubernetes}"
        );
    }
    assert!(section("Cluster").contains("--in-cluster"), "{text}");
    let engine = run("kubectl-dr", &["list", "-h"], &[]);
    assert!(
        stdout(&engine).contains("postgres") && stdout(&engine).contains("redis"),
        "--engine does not list the engines: {}",
        stdout(&engine)
    );
    let verify = stdout(&run("kubectl-dr", &["verify", "--help"], &[]));
    assert!(verify.contains("Redis: redis://"), "{verify}");
    let drill = stdout(&run("worker", &["drill", "--help"], &[]));
    assert!(drill.contains("worker drill --identity"), "{drill}");
    let list = stdout(&run("kubectl-dr", &["list", "--help"], &[]));
    assert!(list.contains("--include-incomplete"), "{list}");
    let install = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/install.sh"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&install.stdout).contains("set -euo pipefail"),
        "{}",
        String::from_utf8_lossy(&install.stdout)
    );
}
