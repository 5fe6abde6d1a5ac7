//! The `bodflow` binary; everything lives in the library.

/// mimalloc rather than glibc malloc: cheaper allocation on the hot path and less memory
/// held by per-thread arenas (benches/README.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bodflow::cli::main()
}
