//! The `bodflow` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    bodflow::cli::main()
}
