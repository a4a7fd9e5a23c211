//! `writ verify-quote`: verifies a TPM2_Quote made by tpm2-tools, as `tpm2_checkquote` does, with
//! writ's verifier. Exit 0 verified, 1 rejected (the failed check is named), 2 usage or input error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use writ_attestation::EvidenceError;
use writ_attestation::crypto::default_provider;
use writ_attestation::evidence::{CheckedAk, Nonce, VerifiedQuote, verify_quote};
use writ_attestation::tpm::attest::Attest;
use writ_attestation::tpm::pcr::PcrSelection;
use writ_attestation::tpm::public::Public;
use writ_attestation::tpm::signature::Signature;
use writ_attestation::tpm::tools::read_pcr_file;

/// Largest input file read (a quote, a signature, a PCR file, a public area are all small).
const MAX_FILE: u64 = 64 * 1024;

#[derive(Debug, Args)]
pub struct VerifyQuote {
    #[command(flatten)]
    quote: QuoteArgs,
}

/// The quote files tpm2-tools writes, and what the quote must answer.
#[derive(Debug, Args)]
pub struct QuoteArgs {
    /// The AK's public area: TPM2B_PUBLIC as `tpm2_createak -u` writes it (or a bare TPMT_PUBLIC).
    /// A PEM key is refused: it carries none of the attributes that make a key an AK.
    #[arg(long)]
    ak: PathBuf,
    /// The quote: TPMS_ATTEST as `tpm2_quote -m` writes it.
    #[arg(long)]
    message: PathBuf,
    /// The signature: TPMT_SIGNATURE as `tpm2_quote -s` writes it.
    #[arg(long)]
    signature: PathBuf,
    /// The PCR values: the file `tpm2_quote -o` writes.
    #[arg(long)]
    pcrs: PathBuf,
    /// The nonce (qualifying data) the quote must carry, in hex.
    #[arg(long)]
    nonce: String,
    /// The PCR selection policy requires, e.g. `sha256:0,1,2,7`. The quote must cover exactly it.
    #[arg(long)]
    pcr_list: String,
}

/// Input problems: exit 2.
fn input(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Reads a small input file (bounded).
pub fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    read_bounded(path, what, MAX_FILE)
}

/// Reads an input file of at most `max` bytes.
pub fn read_bounded(path: &PathBuf, what: &str, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| input(what, format!("{}: {e}", path.display())))?;
    let mut buf = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| input(what, e))?;
    if buf.len() as u64 > max {
        return Err(input(
            what,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(buf)
}

fn ak_public(bytes: &[u8]) -> Result<Public, EvidenceError> {
    if bytes.starts_with(b"-----BEGIN") {
        return Err(EvidenceError::Malformed(
            "a PEM key carries no TPM attributes; give the TPM2B_PUBLIC (tpm2_createak -u)".into(),
        ));
    }
    Public::from_tpm2b(bytes).or_else(|_| Public::from_tpmt(bytes))
}

/// Why a quote was not verified.
pub enum QuoteFailure {
    /// An input could not be read or is not the structure it should be (exit 2).
    Input(String),
    /// The quote was checked and refused (exit 1).
    Rejected(EvidenceError),
}

impl QuoteArgs {
    /// Reads the files and verifies the quote with writ's verifier.
    pub fn verify(&self) -> Result<VerifiedQuote, QuoteFailure> {
        let inputs = (|| -> Result<_, String> {
            let ak = read(&self.ak, "--ak")?;
            let message = read(&self.message, "--message")?;
            let signature = read(&self.signature, "--signature")?;
            let pcr_file = read(&self.pcrs, "--pcrs")?;
            let nonce_bytes = hex::decode(self.nonce.trim()).map_err(|e| input("--nonce", e))?;
            let nonce = Nonce::new(&nonce_bytes).map_err(|e| input("--nonce", e))?;
            let required: PcrSelection =
                self.pcr_list.parse().map_err(|e| input("--pcr-list", e))?;
            let (_, values) = read_pcr_file(&pcr_file).map_err(|e| input("--pcrs", e))?;
            let public = ak_public(&ak).map_err(|e| input("--ak", e))?;
            // Structure only, untrusted until the signature is checked: a file that is not a
            // TPMS_ATTEST or TPMT_SIGNATURE at all is an input error (2), not a rejection (1).
            Attest::parse(&message).map_err(|e| input("--message", e))?;
            Signature::from_tpmt(&signature).map_err(|e| input("--signature", e))?;
            Ok((public, message, signature, nonce, required, values))
        })();
        let (public, message, signature, nonce, required, values) =
            inputs.map_err(QuoteFailure::Input)?;
        CheckedAk::check(public)
            .and_then(|ak| {
                verify_quote(
                    default_provider(),
                    &ak,
                    &message,
                    &signature,
                    &nonce,
                    &required,
                    &values,
                )
            })
            .map_err(QuoteFailure::Rejected)
    }
}

pub fn run(args: VerifyQuote) -> ExitCode {
    let provider = default_provider();
    match args.quote.verify() {
        Ok(q) => {
            let c = q.clock();
            println!(
                "verified: quote over {} by AK {}",
                q.selection(),
                hex::encode(q.ak_name())
            );
            println!(
                "  nonce ok, pcrDigest ok, signature ok ({}); clock {} ms, resetCount {}, restartCount {}, safe {}",
                provider.name(),
                c.clock,
                c.reset_count,
                c.restart_count,
                c.safe
            );
            ExitCode::SUCCESS
        }
        Err(QuoteFailure::Input(e)) => {
            eprintln!("writ verify-quote: error: {e}");
            ExitCode::from(2)
        }
        Err(QuoteFailure::Rejected(e)) => {
            println!("rejected: {}: {e}", e.code());
            ExitCode::from(1)
        }
    }
}
