fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc is not assumed to be installed: use the vendored binary.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(&["proto/berth.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/berth.proto");
    Ok(())
}
