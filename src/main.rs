//! The `kdx` binary: link the built-in plugins and hand over to the framework's CLI.

// `inventory` only sees registrations of crates the linker keeps: name the plugins crate.
use kdx_plugins as _;

/// Every training step allocates fresh tensors (dfdx outputs, gradients); with glibc's
/// malloc the large ones go back to the kernel on free and are page-faulted in again on the
/// next step, which `perf` showed to cost about a third of a step. mimalloc reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kdx_framework::cli::main()
}
