//! sfp-server: the control plane for Salesforce DevOps.
//!
//! The library holds everything; the `sfp-server` binary only parses its command line.
//! [`api::run`] serves the HTTP API on a listener the caller bound, so tests start the real
//! application on port 0.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod example;
pub mod health;
pub mod integrations;
pub mod notifications;
pub mod pipelines;
pub mod salesforce;
pub mod stack;
pub mod state;
pub mod tasks;
pub mod telemetry;
pub mod vault;

pub use state::{AppState, Services};
