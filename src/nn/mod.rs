//! Layers built from ops.
