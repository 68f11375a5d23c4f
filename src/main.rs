//! The `berth` binary: parses flags and calls library `run` functions. Nothing else lives here.

fn main() -> std::process::ExitCode {
    berth::main()
}
