//! A fault-injecting proxy in front of a real swtpm.
//!
//! swtpm's data channel carries plain TPM 2.0 commands and responses (a 10-byte header with the
//! total size), so the proxy can read one command at a time. For a chosen command code it answers
//! the first `count` occurrences itself with a bare response carrying `rc` (e.g. TPM_RC_RETRY),
//! without forwarding them; everything else goes to the real TPM untouched. The control channel is
//! forwarded byte for byte.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::Swtpm;

/// What to inject.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// TPM command code to intercept (e.g. 0x0000_015D for TPM2_Sign).
    pub command_code: u32,
    /// Response code to answer with (e.g. 0x0000_0922 TPM_RC_RETRY).
    pub rc: u32,
    /// How many occurrences to intercept; after that the command is forwarded.
    pub count: u32,
}

/// A running proxy. Stops accepting on drop.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    injected: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    /// While set, the proxy plays a TPM that is gone: connections are closed at once.
    down: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    _lease: crate::PortLease,
}

impl FaultProxy {
    /// Starts a proxy to `tpm` that applies `fault`.
    pub fn start(tpm: &Swtpm, fault: Fault) -> FaultProxy {
        let lease = crate::lease_port_pair();
        let port = lease.port;
        let data = TcpListener::bind(("127.0.0.1", port)).expect("bind proxy data port");
        let ctrl = TcpListener::bind(("127.0.0.1", port + 1)).expect("bind proxy ctrl port");
        let injected = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let upstream = tpm.port();
        {
            let injected = injected.clone();
            let stop = stop.clone();
            let down = down.clone();
            let live = live.clone();
            let seen = seen.clone();
            thread::spawn(move || {
                for client in data.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    if down.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    if let Ok(clone) = client.try_clone() {
                        live.lock().unwrap().push(clone);
                    }
                    let injected = injected.clone();
                    let seen = seen.clone();
                    thread::spawn(move || {
                        let _ = serve_data(client, upstream, fault, &injected, &seen);
                    });
                }
            });
        }
        {
            let stop = stop.clone();
            let down = down.clone();
            thread::spawn(move || {
                for client in ctrl.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    if down.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    thread::spawn(move || {
                        let _ = splice(client, upstream + 1);
                    });
                }
            });
        }
        FaultProxy {
            port,
            injected,
            stop,
            down,
            live,
            seen,
            _lease: lease,
        }
    }

    /// Every command the proxy has seen, as sent (what an observer of the TPM bus would see).
    pub fn commands(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }

    /// Plays a TPM that went away (`true`: open connections are cut, new ones closed at once) or
    /// came back (`false`). The ports stay bound, so no other test can take them meanwhile.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut_connections();
        }
    }

    /// Cuts every open connection, as a TPM daemon restart would; new ones are accepted.
    pub fn cut_connections(&self) {
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The TCTI string that goes through the proxy.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// How many responses the proxy has forged so far.
    pub fn injected(&self) -> u32 {
        self.injected.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loops so they see the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = TcpStream::connect(("127.0.0.1", self.port + 1));
    }
}

fn read_message(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 10];
    stream.read_exact(&mut header)?;
    let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if !(10..=1 << 16).contains(&size) {
        return Err(std::io::Error::other("bad TPM message size"));
    }
    let mut msg = header.to_vec();
    msg.resize(size, 0);
    stream.read_exact(&mut msg[10..])?;
    Ok(msg)
}

fn serve_data(
    mut client: TcpStream,
    upstream: u16,
    fault: Fault,
    injected: &AtomicU32,
    seen: &Mutex<Vec<Vec<u8>>>,
) -> std::io::Result<()> {
    let mut tpm = TcpStream::connect(("127.0.0.1", upstream))?;
    loop {
        let command = read_message(&mut client)?;
        seen.lock().unwrap().push(command.clone());
        let cc = u32::from_be_bytes([command[6], command[7], command[8], command[9]]);
        if cc == fault.command_code
            && injected
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < fault.count).then_some(n + 1)
                })
                .is_ok()
        {
            let mut response = vec![0x80, 0x01, 0, 0, 0, 10];
            response.extend_from_slice(&fault.rc.to_be_bytes());
            client.write_all(&response)?;
            continue;
        }
        tpm.write_all(&command)?;
        let response = read_message(&mut tpm)?;
        client.write_all(&response)?;
    }
}

fn splice(client: TcpStream, upstream: u16) -> std::io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let (mut s_read, mut c_write) = (server, client);
    let up = thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
    Ok(())
}
