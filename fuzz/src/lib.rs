//! What the fuzz targets share: a hostile driver's virtqueue laid out in
//! guest memory ([`ring`]).
//!
//! Each target in `fuzz_targets/` drives one thing agentvm parses from a
//! guest or a local client; `scripts/fuzz` builds them with the
//! sanitizer-coverage flags and runs them.

pub mod frames;
pub mod ring;
