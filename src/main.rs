//! The `kdx` binary: link the built-in plugins and hand over to the CLI.

// `inventory` only sees registrations of crates the linker keeps: name the plugins crate.
use kdx_plugins as _;

/// Every training step allocates fresh tensors (dfdx outputs, gradients); with glibc's
/// malloc the large ones go back to the kernel on free and are page-faulted in again on the
/// next step, which `perf` showed to cost about a third of a step. mimalloc reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Like other Unix tools, end quietly when a reader closes the pipe (`kdx … | head`):
    // Rust ignores SIGPIPE, so a write would fail and `println!` would panic instead.
    #[cfg(unix)]
    // SAFETY: the first thing `main` does, before any other thread exists; restoring the
    // default disposition of a signal has no other effect on this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    quiet_plugin_panics();
    kdx::cli::main()
}

/// A panic inside a plugin is caught and reported by kdx with the plugin's message; Rust's
/// own panic output would only repeat it (with a backtrace under `RUST_BACKTRACE`). Shown
/// anyway when `KDX_PLUGIN_PANIC_OUTPUT` is set; panics of kdx itself always are.
fn quiet_plugin_panics() {
    let default = std::panic::take_hook();
    let show_plugin_panics =
        std::env::var_os(kdx_framework::dylib::kdx_sdk::export::PANIC_OUTPUT_VAR).is_some();
    std::panic::set_hook(Box::new(move |info| {
        if show_plugin_panics || !kdx_framework::dylib::in_plugin_call() {
            default(info);
        }
    }));
}
