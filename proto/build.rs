//! Compiles `tarefa/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> anyhow::Result<()> {
    let proto = "tarefa/v1/tarefa.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set is embedded for gRPC server reflection.
    std::fs::write(
        out_dir.join("tarefa_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
