//! Until verification is built, the gateway refuses everything: nothing may run without a valid writ.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[test]
fn refuses_everything_with_exit_2() {
    for args in [
        &["exec", "--tool", "ls", "--", "-l"][..],
        &["verify"][..],
        &[][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_writ-gate"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("refusing"));
    }
}
