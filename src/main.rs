//! The `kdx` binary: link the built-in plugins and hand over to the framework's CLI.

// `inventory` only sees registrations of crates the linker keeps: name the plugins crate.
use kdx_plugins as _;

fn main() -> std::process::ExitCode {
    kdx_framework::cli::main()
}
