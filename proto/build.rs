//! Compiles the `.proto` files with protox, so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "gatewan/v1/model.proto",
        "gatewan/v1/mesh_wire.proto",
        "gatewan/v1/api.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
