//! `writ-gate`, the execution gateway. Not built yet: this binary exists so the workspace has its
//! final shape, and it refuses everything (exit 2) until verification lands. It links no TPM or
//! PKCS#11 library and never will.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("writ-gate {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "writ-gate: refusing: writ verification is not built yet in this version; nothing is run or forwarded"
    );
    // 2 = error, which is a refusal.
    ExitCode::from(2)
}
