//! The kubectl-like CLI (skeleton; filled in by the CLI work).

pub fn main() -> std::process::ExitCode {
    eprintln!("berth: not yet implemented");
    std::process::ExitCode::FAILURE
}
