//! `writ-gate exec` end to end through the binary: a tool of the manifest runs once for a writ
//! that names exactly that command, with the manifest's environment alone, after the decision is
//! durable in the spool (the replay store); a replayed writ, other arguments, a tool whose file
//! changed or that others can write, an unknown tool, a full spool and a store that cannot be
//! written run nothing.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::{AUD, setup};
use sha2::{Digest, Sha256};
use writ_attestation::writ::request::{Request, digest};

/// A tool that appends its arguments to `$OUT` and what it saw of the environment to `$OUT.env`.
const TOOL: &str = "#!/bin/sh\nprintf '%s\\n' \"$*\" >> \"$OUT\"\nprintf 'MARK=%s HOME=%s\\n' \"$MARK\" \"$HOME\" >> \"$OUT.env\"\n";

/// The tool, its manifest and the gateway's configuration in `dir`.
fn gateway(dir: &Path, replay_db: &str, extra: &str) {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tool = bin.join("hello");
    std::fs::write(&tool, TOOL).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "audience = \"{AUD}\"\nbundle = \"{d}/bundle.json\"\nreplay_db = \"{replay_db}\"\n{extra}\n[tools.hello]\npath = \"{t}\"\nsha256 = \"{h}\"\ncwd = \"{d}\"\nenv = {{ OUT = \"{d}/out\", MARK = \"from-the-manifest\" }}\n",
        d = dir.display(),
        t = tool.display(),
        h = hex::encode(Sha256::digest(TOOL.as_bytes())),
    );
    std::fs::write(dir.join("gate.toml"), config).unwrap();
}

fn exec(dir: &Path, tool: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_writ-gate"))
        .current_dir(dir)
        .env("HOME", "/should/not/pass")
        .args([
            "exec",
            "--config",
            "gate.toml",
            "--writ",
            "writ.jws",
            "--proof",
            "proof.jws",
            "--tool",
            tool,
            "--",
        ])
        .args(args)
        .output()
        .unwrap()
}

fn req(args: &[&str]) -> String {
    let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    digest(&Request::Exec {
        tool: "hello",
        argv: &argv,
    })
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The spool's entries, as `writ-gate spool` prints them.
fn journal(dir: &Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_writ-gate"))
        .current_dir(dir)
        .args(["spool", "--config", "gate.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["entry"].clone())
        .collect()
}

fn standard(d: &Path) {
    gateway(d, &d.join("replay.db").display().to_string(), "");
}

fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("out"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_tool_runs_once_for_its_writ_with_the_manifest_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    standard(d);
    let r = req(&["world"]);
    setup(d, &r, "EXEC", &format!("exec:{r}"), 1);

    let out = exec(d, "hello", &["world"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(d.join("out")).unwrap(), "world\n");
    // The manifest's environment alone: nothing of the caller's (HOME) passes.
    assert_eq!(
        std::fs::read_to_string(d.join("out.env")).unwrap(),
        "MARK=from-the-manifest HOME=\n"
    );
    let j = journal(d);
    assert_eq!(j.len(), 2, "{j:?}");
    assert_eq!(
        (j[0]["kind"].as_str(), j[0]["decision"].as_str()),
        (Some("gate"), Some("allow"))
    );
    assert_eq!(j[0]["writ"]["request"], r);
    assert_eq!(j[0]["request"]["tool"], "hello");
    assert_eq!(
        (j[1]["kind"].as_str(), j[1]["exit"].as_i64()),
        (Some("outcome"), Some(0))
    );

    // The same writ again: replayed, nothing runs, the refusal is spooled.
    let out = exec(d, "hello", &["world"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("replayed"), "{}", text(&out));
    assert_eq!(runs(d), 1);
    // Refusals are printed, not spooled (nobody is identified before the writ verifies).
    assert_eq!(journal(d).len(), 2);
}

#[test]
fn nothing_runs_without_a_writ_for_exactly_this_tool_file_and_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    standard(d);
    let r = req(&["world"]);
    setup(d, &r, "EXEC", &format!("exec:{r}"), 2);
    let refused = |args: &[&str], tool: &str, code: &str| {
        let out = exec(d, tool, args);
        assert_eq!(out.status.code(), Some(1), "{code}: {}", text(&out));
        assert!(text(&out).contains(code), "{code}: {}", text(&out));
        assert_eq!(runs(d), 0, "{code}: the tool ran");
    };
    // Other arguments than the writ names.
    refused(&["everyone"], "hello", "request");
    // A tool the manifest does not name.
    refused(&["world"], "rm", "tool_unknown");
    // The tool's file writable by others, then changed.
    let tool = d.join("bin/hello");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o757)).unwrap();
    refused(&["world"], "hello", "tool_writable");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A folder above it writable by others.
    std::fs::set_permissions(d.join("bin"), std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&["world"], "hello", "tool_writable");
    std::fs::set_permissions(d.join("bin"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&tool, format!("{TOOL}# changed\n")).unwrap();
    refused(&["world"], "hello", "tool_hash");
    std::fs::write(&tool, TOOL).unwrap();
    // A symbolic link on the way to the tool, even to the right file.
    std::fs::rename(d.join("bin"), d.join("real-bin")).unwrap();
    std::os::unix::fs::symlink(d.join("real-bin"), d.join("bin")).unwrap();
    refused(&["world"], "hello", "tool_writable");
    std::fs::remove_file(d.join("bin")).unwrap();
    std::fs::rename(d.join("real-bin"), d.join("bin")).unwrap();
    // The trust bundle writable by others: the gateway trusts nothing.
    std::fs::set_permissions(
        d.join("bundle.json"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    refused(&["world"], "hello", "config");
    std::fs::set_permissions(
        d.join("bundle.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // Nothing was spooled for any of these.
    assert!(journal(d).is_empty());
    // And with everything put back, it runs.
    let out = exec(d, "hello", &["world"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(runs(d), 1);
}

#[test]
fn a_configuration_with_relative_trust_paths_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    standard(d);
    let config = std::fs::read_to_string(d.join("gate.toml"))
        .unwrap()
        .replace(
            &format!("\"{}/bundle.json\"", d.display()),
            "\"bundle.json\"",
        );
    std::fs::write(d.join("gate.toml"), config).unwrap();
    let r = req(&["world"]);
    setup(d, &r, "EXEC", &format!("exec:{r}"), 4);
    let out = exec(d, "hello", &["world"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("absolute"), "{}", text(&out));
    assert_eq!(runs(d), 0);
}

#[test]
fn a_store_that_cannot_be_written_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Under a file: no database can be made there, whoever runs the test.
    std::fs::write(d.join("not-a-folder"), b"").unwrap();
    gateway(
        d,
        &d.join("not-a-folder/replay.db").display().to_string(),
        "",
    );
    let r = req(&["world"]);
    setup(d, &r, "EXEC", &format!("exec:{r}"), 3);
    let out = exec(d, "hello", &["world"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("not-a-folder"), "{}", text(&out));
    assert_eq!(runs(d), 0);
}

#[test]
fn a_full_spool_runs_nothing_and_consumes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gateway(
        d,
        &d.join("replay.db").display().to_string(),
        "spool_max = 2\n",
    );
    let r = req(&["one"]);
    setup(d, &r, "EXEC", &format!("exec:{r}"), 5);
    let out = exec(d, "hello", &["one"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The allow and its outcome: the spool is full.
    assert_eq!(journal(d).len(), 2);
    let r = req(&["two"]);
    setup(d, &r, "EXEC", &format!("exec:{r}"), 6);
    let out = exec(d, "hello", &["two"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("spool_full"), "{}", text(&out));
    assert_eq!(runs(d), 1);
    // Nothing was consumed: with room again, the same writ runs.
    let config = std::fs::read_to_string(d.join("gate.toml"))
        .unwrap()
        .replace("spool_max = 2", "spool_max = 4");
    std::fs::write(d.join("gate.toml"), config).unwrap();
    let out = exec(d, "hello", &["two"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(runs(d), 2);
}

#[test]
fn tools_prints_the_manifest_and_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    standard(d);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_writ-gate"))
        .current_dir(d)
        .args(["tools", "--config", "gate.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        v["manifest"]["tools"]["hello"]["sha256"],
        hex::encode(Sha256::digest(TOOL.as_bytes()))
    );
}

#[test]
fn a_second_configuration_on_the_command_line_is_refused() {
    // The sudo rule of deploy/gateway pins --config; a caller appending another must not win.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    standard(d);
    let r = req(&["world"]);
    setup(d, &r, "EXEC", &format!("exec:{r}"), 7);
    std::fs::write(d.join("other.toml"), "audience = \"x\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_writ-gate"))
        .current_dir(d)
        .args([
            "exec",
            "--config",
            "gate.toml",
            "--config",
            "other.toml",
            "--writ",
            "writ.jws",
            "--proof",
            "proof.jws",
            "--tool",
            "hello",
            "--",
            "world",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("cannot be used multiple times"),
        "{}",
        text(&out)
    );
    assert_eq!(runs(d), 0);
}

#[test]
fn without_a_clock_nothing_runs() {
    // libfaketime puts the clock before 1970, as a machine whose RTC was lost may boot.
    let Ok(faketime) = which("faketime") else {
        panic!("faketime is required (deploy/dev/install-deps.sh installs it)");
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    standard(d);
    let r = req(&["world"]);
    setup(d, &r, "EXEC", &format!("exec:{r}"), 8);
    let out = std::process::Command::new(faketime)
        .current_dir(d)
        .arg("1960-01-01 00:00:00")
        .arg(env!("CARGO_BIN_EXE_writ-gate"))
        .args([
            "exec",
            "--config",
            "gate.toml",
            "--writ",
            "writ.jws",
            "--proof",
            "proof.jws",
            "--tool",
            "hello",
            "--",
            "world",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("deny: clock"), "{}", text(&out));
    assert_eq!(runs(d), 0);
    // With the clock back, the same writ (never spent) runs.
    let out = exec(d, "hello", &["world"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
