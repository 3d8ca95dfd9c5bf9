//! The install paths a new user takes: `scripts/install.sh` puts both binaries into a
//! directory and `kubectl dr` finds the plugin there; `scripts/release.sh` writes the
//! plugin's archive and a krew manifest whose sha256 is the archive's, whose files are in
//! it, and whose description names every engine of this build.

use std::process::Command;

use dr_tests::*;
use sha2::{Digest, Sha256};

/// The directory holding the binaries the tests run (target/debug).
fn built() -> std::path::PathBuf {
    binary("kubectl-dr").parent().unwrap().to_path_buf()
}

fn script(name: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(repo_root().join("scripts").join(name))
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "$ scripts/{name} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn install_puts_both_binaries_where_kubectl_finds_the_plugin() {
    let prefix = tempfile::tempdir().unwrap();
    let dir = prefix.path().to_str().unwrap();
    let out = script(
        "install.sh",
        &["--bin-dir", built().to_str().unwrap(), "--prefix", dir],
    );
    assert_eq!(code(&out), 0);
    for bin in ["worker", "kubectl-dr"] {
        let installed = prefix.path().join(bin);
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(built().join(bin)).unwrap(),
            "{bin}"
        );
        let out = Command::new(&installed).arg("--version").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("{bin} ")));
    }
    let path = format!("{dir}:{}", std::env::var("PATH").unwrap_or_default());
    let has_kubectl = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok();
    let (program, args) = if has_kubectl {
        ("kubectl", vec!["dr", "list", "--help"])
    } else {
        ("kubectl-dr", vec!["list", "--help"])
    };
    let out = Command::new(program)
        .args(&args)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{program} {args:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
}

/// A bin dir whose `kubectl-dr` is a small wrapper of the built one: the script packages
/// it like the real binary, without compressing a whole debug build twice.
fn wrapped_plugin() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("kubectl-dr");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\"\n",
            binary("kubectl-dr").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn the_release_archive_and_its_krew_manifest_agree() {
    let bin_dir = wrapped_plugin();
    let bin_dir_arg = bin_dir.path().to_str().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = script(
        "release.sh",
        &[
            "--bin-dir",
            bin_dir_arg,
            "--out",
            out_dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 0);
    let manifest: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out_dir.path().join("dr.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "dr");
    assert_eq!(
        manifest["spec"]["version"].as_str().unwrap(),
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let description = manifest["spec"]["description"].as_str().unwrap();
    for engine in drkit::engine::registry::ENGINES {
        assert!(description.contains(engine.display_name()), "{description}");
    }
    let platforms = manifest["spec"]["platforms"].as_sequence().unwrap();
    assert_eq!(platforms.len(), 1);
    let platform = &platforms[0];
    let uri = platform["uri"].as_str().unwrap();
    let archive = out_dir.path().join(uri.rsplit('/').next().unwrap());
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(platform["sha256"].as_str().unwrap(), sha256_hex(&bytes));
    assert_eq!(platform["bin"], "kubectl-dr");

    // The files krew copies are in the archive, and the binary is the one built.
    let unpacked = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .unwrap();
    assert!(status.success());
    for file in platform["files"].as_sequence().unwrap() {
        let from = file["from"].as_str().unwrap();
        assert!(
            unpacked.path().join(from).exists(),
            "{from} not in the archive"
        );
    }
    assert_eq!(
        std::fs::read(unpacked.path().join("kubectl-dr")).unwrap(),
        std::fs::read(bin_dir.path().join("kubectl-dr")).unwrap()
    );

    // Reproducible: the same binary gives the same archive and sha256.
    let again = tempfile::tempdir().unwrap();
    let out = script(
        "release.sh",
        &[
            "--bin-dir",
            bin_dir_arg,
            "--out",
            again.path().to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 0);
    assert_eq!(
        std::fs::read(again.path().join(archive.file_name().unwrap())).unwrap(),
        bytes
    );
}
