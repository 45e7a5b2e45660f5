//! Runtime-sized layers on dfdx tensors, one file per layer.
//!
//! dfdx 0.13 sizes its `nn` layers at compile time; recipes size models at run time, so
//! these layers hold plain [`Param`] buffers and bind them to dfdx tensors for each pass.
//! Dense layers run on dfdx with its autodiff; the embedding bag is fused by hand, and the
//! transformer ([`encoder`], [`attention`], [`kernels`]) is differentiated by hand on `gemm`.

mod activation;
pub mod attention;
mod blocks;
mod config;
mod embedding_bag;
pub mod encoder;
mod init;
pub mod kernels;
mod layer_norm;
mod linear;
mod mlp;
#[macro_use]
pub mod module;
mod projection;
mod token_batch;
pub mod transformer;
mod workspace;

pub use activation::Activation;
pub use config::ConfigError;
pub use embedding_bag::EmbeddingBag;
pub use encoder::{Embeddings, Encoder, EncoderConfig, EncoderLayer, FeedForward, SelfAttention, TokenBatch};
pub use init::init_uniform;
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use mlp::Mlp;
pub use module::Module;
pub use projection::{HiddenProjection, ProjectionMode};
pub use transformer::{Pooling, TransformerModel};
pub use workspace::Workspace;
