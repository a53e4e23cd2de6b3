//! Hardening cases: relay regressions (issue 12, items 1-10).

#[allow(unused_imports)]
use crate::cases::{p, send_through, tmp};
use crate::support::cases;
#[allow(unused_imports)]
use crate::support::{Ctx, all_files, delivered};

cases!();
