//! What this binary is: its version, the commit and the date it was built
//! from (see build.rs), as `--version`, the status page and `/api/` show it.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("WARREN_COMMIT");
pub const BUILD_DATE: &str = env!("WARREN_BUILD_DATE");

/// `0.1.0 (commit 1a2b3c4d5e6f, built 2026-12-05)`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WARREN_COMMIT"),
    ", built ",
    env!("WARREN_BUILD_DATE"),
    ")"
);
