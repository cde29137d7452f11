//! Compiles `proto/` with the pure-Rust protox (no protoc needed) into tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["dispatcher.proto", "events.proto", "workflows.proto", "v1/trigger.proto", "v1/workflows.proto"];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
