//! Hardening cases: session cleanup, PROXY protocol, sockets (issue 12, items 11-15, 28).

#[allow(unused_imports)]
use crate::cases::{p, send_through, tmp};
use crate::support::cases;
#[allow(unused_imports)]
use crate::support::{Ctx, all_files, delivered};

