//! Adapter crate for the `smtp-proto` core (work in progress: see the issue tracker).
//!
//! ```
//! // The core this adapter will drive:
//! let config = smtp_proto::config::Config::new("mx.example");
//! assert_eq!(config.hostname, "mx.example");
//! ```
