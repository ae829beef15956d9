//! The Debian package: built by `cross/deb/build.sh` around the binary under
//! test, checked by lintian, and installed, run, removed and purged in a
//! throw-away copy of this machine (`tests/package/install.sh`: an overlay
//! over / in private mount and network namespaces; needs root, as CI is).

// A test that cannot go on fails: unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tidewell");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build_deb(out: &Path) -> PathBuf {
    let built = Command::new("bash")
        .arg(repo().join("cross/deb/build.sh"))
        .args(["amd64", "--binary", BIN, "--out"])
        .arg(out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "build.sh failed: {stderr}");
    let path = String::from_utf8(built.stdout).unwrap();
    PathBuf::from(path.lines().last().unwrap())
}

/// Informational tags that remain, each explained in cross/deb/README.md.
const EXPLAINED_TAGS: &[&str] = &[
    "hardening-no-fortify-functions",
    "package-supports-alternative-init-but-no-init.d-script",
    "spelling-error-in-binary",
];

#[test]
fn lintian_reports_no_errors_or_warnings_and_only_explained_notes() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let out = Command::new("lintian")
        .args([
            "--info",
            "--display-info",
            "--pedantic",
            "--no-tag-display-limit",
        ])
        .arg(&deb)
        .output()
        .expect("lintian (tests/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let unexplained: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(": tidewell"))
        .filter(|l| {
            !EXPLAINED_TAGS
                .iter()
                .any(|t| l.contains(&format!(": {t} ")))
        })
        .collect();
    assert!(unexplained.is_empty(), "new lintian tags:\n{stdout}");
}

#[test]
fn the_package_installs_runs_and_removal_keeps_data_that_purge_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--propagation",
            "private",
            "--fork",
            "sh",
        ])
        .arg(repo().join("tests/package/install.sh"))
        .arg(&deb)
        .output()
        .expect("unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for step in [
        "ok: enabled and started",
        "ok: config check on the shipped config",
        "ok: systemd-analyze verify",
        "ok: the gateway runs as tidewell",
        "ok: a broken config is reported and not restarted into",
        "ok: dpkg -r stops the unit, keeps the data",
        "ok: dpkg --purge deletes the data",
    ] {
        assert!(stdout.contains(step), "missing {step:?}:\n{stdout}");
    }
}

/// The hand-written man page names every subcommand `--help` lists.
#[test]
fn the_man_page_covers_every_subcommand() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let page = std::fs::read_to_string(repo().join("cross/deb/tidewell.1")).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 6, "{help}");
    for c in commands {
        assert!(
            page.contains(&format!(".B {c}")),
            "tidewell.1 does not describe `{c}`"
        );
    }
}
