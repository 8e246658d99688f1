//! Generates the gRPC code from `auth/v1/auth.proto` with protox (a pure-Rust protoc), so a
//! build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=auth/v1/auth.proto");
    let fds = protox::compile(["auth/v1/auth.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
