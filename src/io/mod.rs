//! Reading and writing tensors: safetensors.
