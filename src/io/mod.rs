//! Reading and writing tensors: safetensors.

pub mod safetensors;

pub use self::safetensors::{load, save, SafeTensorsFile};
