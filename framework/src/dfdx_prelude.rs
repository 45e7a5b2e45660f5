//! The dfdx types the framework and plugins share: one device type and the runtime-shaped
//! tensor aliases. `--features cuda` switches the device to dfdx's CUDA device.

pub use dfdx::prelude::*;

/// The compute device (dfdx `Cpu`, or `Cuda` with `--features cuda`).
#[cfg(not(feature = "cuda"))]
pub type Dev = dfdx::tensor::Cpu;
/// The compute device (dfdx `Cpu`, or `Cuda` with `--features cuda`).
#[cfg(feature = "cuda")]
pub type Dev = dfdx::tensor::Cuda;

/// A runtime-sized matrix without a tape.
pub type T2 = Tensor<(usize, usize), f32, Dev>;
/// A runtime-sized vector without a tape.
pub type T1 = Tensor<(usize,), f32, Dev>;
/// A runtime-sized matrix recording onto a tape.
pub type Traced2 = Tensor<(usize, usize), f32, Dev, OwnedTape<f32, Dev>>;
/// A scalar recording onto a tape.
pub type Traced0 = Tensor<(), f32, Dev, OwnedTape<f32, Dev>>;

/// The device of the calling thread. Creating a dfdx device allocates a cache and an RNG,
/// so each thread creates one once; per thread because dfdx's CUDA device is neither `Send`
/// nor `Sync`. The framework never uses the device's RNG (determinism comes from seeds the
/// engine derives per step).
pub fn device() -> Dev {
    thread_local! {
        static DEV: Dev = Dev::default();
    }
    DEV.with(Dev::clone)
}
