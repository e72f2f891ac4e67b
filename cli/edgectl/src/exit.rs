//! Exit codes, as documented in `--help`.
pub const OK: u8 = 0;
pub const ERROR: u8 = 1;
pub const CHANGES: u8 = 2;
pub const NODES_FAILED: u8 = 3;
pub const CHECKS_FAILED: u8 = 4;
