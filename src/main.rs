//! The `bodflow` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    bodflow::cli::main()
}

/// mimalloc: the pipeline allocates many small strings per document; glibc malloc spent a
/// quarter of replay's CPU time in allocation and consolidation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
