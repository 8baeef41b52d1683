//! clipcu: CLIP (contrastive language–image pre-training) in Rust, with hand-written CUDA kernels.
//!
//! The layers, bottom up: [`Tensor`] (shape, strides, dtype, device), [`ops`] (one folder per op
//! family, forward and backward, CPU reference), [`graph`] (autograd-lite: record forward, run
//! backward with one explicit rule per op, checkpointing), [`nn`] (layers built from ops).
//!
//! A model of your own, trained by hand:
//! ```
//! use clipcu::{Graph, Param, Tensor};
//! # fn main() -> clipcu::Result<()> {
//! // y = relu(x·Wᵀ + b), loss = mean(y)
//! let w = Param::new("w", Tensor::randn([4, 3], 0.5, 1));
//! let b = Param::new("b", Tensor::zeros([4]));
//! let x = Tensor::randn([8, 3], 1.0, 2);
//! for _ in 0..3 {
//!     let g = Graph::new();
//!     let (xv, wv, bv) = (g.constant(x.clone()), g.param(&w), g.param(&b));
//!     let h = g.add(&g.matmul(&xv, &wv, false, true)?, &bv)?;
//!     let loss = g.mean(&g.relu(&h)?, None)?;
//!     g.backward(&loss)?;
//!     // plain SGD: w −= 0.1·∂loss/∂w
//!     for p in [&w, &b] {
//!         let step = clipcu::ops::unary::scale(&p.grad().unwrap(), -0.1)?;
//!         p.set_value(clipcu::ops::binary::add(&p.value(), &step)?)?;
//!         p.zero_grad();
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod alloc;
pub mod bench;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod graph;
pub mod io;
pub mod kernels;
pub mod loss;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod process;
pub mod tensor;
pub mod tokenizer;
pub mod train;
pub mod zeroshot;

pub use device::Device;
pub use error::{Error, Result};
pub use graph::{Grads, Graph, Param, Var};
pub use tensor::{DType, Shape, Tensor, ValueStats};
