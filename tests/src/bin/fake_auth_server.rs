//! `fake-auth-server`: the e2e crate's fake custom authentication server (API 0.5.0, the
//! published sample's default logic) as a program, for the docs' examples and manual tests.
//!
//! ```text
//! fake-auth-server -p PORT -c SERVER_CHAIN.pem -k SERVER_KEY.pem [-i CLIENT_CA.pem] [-b ADDR]
//! ```
//!
//! The options are the published sample's (`-i` requires client certificates from that CA);
//! `-b` sets the bind address (default 127.0.0.1, unlike the sample's 0.0.0.0: this is a test
//! tool). Port 0 picks a free port. It prints `listening on https://ADDR` once ready and one
//! line per request (passwords and authentication data redacted), and stops on Ctrl-C or
//! SIGTERM. It is not meant for production: it authenticates nobody for real.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use e2e::fake_custom_auth::{FakeAuthServer, Options};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const USAGE: &str = "usage: fake-auth-server -p PORT -c SERVER_CHAIN.pem -k SERVER_KEY.pem [-i CLIENT_CA.pem] [-b BIND_ADDR]";

struct Args {
    port: u16,
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    bind: IpAddr,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut port, mut cert, mut key, mut client_ca) = (None, None, None, None);
    let mut bind: IpAddr = [127, 0, 0, 1].into();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "-p" | "--port" => {
                port = Some(
                    value()?
                        .parse::<u16>()
                        .map_err(|e| format!("-p: not a port: {e}"))?,
                )
            }
            "-c" | "--server-cert-chain" => cert = Some(PathBuf::from(value()?)),
            "-k" | "--server-cert-key" => key = Some(PathBuf::from(value()?)),
            "-i" | "--client-cert-issuer" => client_ca = Some(PathBuf::from(value()?)),
            "-b" | "--bind" => {
                bind = value()?
                    .parse()
                    .map_err(|e| format!("-b: not an IP address: {e}"))?
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        port: port.ok_or(format!("-p is required\n{USAGE}"))?,
        cert: cert.ok_or(format!("-c is required\n{USAGE}"))?,
        key: key.ok_or(format!("-k is required\n{USAGE}"))?,
        client_ca,
        bind,
    })
}

fn certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

async fn run(args: Args) -> Result<(), String> {
    let options = Options {
        addr: SocketAddr::new(args.bind, args.port),
        chain: certificates(&args.cert)?,
        key: PrivateKeyDer::from_pem_file(&args.key)
            .map_err(|e| format!("{}: no usable private key: {e}", args.key.display()))?,
        client_ca: args.client_ca.as_ref().map(certificates).transpose()?,
        verbose: true,
    };
    let mtls = options.client_ca.is_some();
    let server = FakeAuthServer::start_with(options)
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.bind, args.port))?;
    println!(
        "listening on {}{}",
        server.endpoint(),
        if mtls {
            " (client certificates required)"
        } else {
            ""
        }
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-auth-server: {e}");
            ExitCode::FAILURE
        }
    }
}
