//! The Hatchet wire protocol as sfp-server speaks it, both as the embedded engine (servers)
//! and as a client (our workers and the control plane). No other crate writes Hatchet
//! messages by hand.
//!
//! * [`pb`]: generated messages, clients and servers for `/Dispatcher`, `/EventsService`,
//!   `/WorkflowService` and `/v1.AdminService`.
//! * [`token`]: tenant tokens (JWT) the engine mints and validates and clients read their
//!   addresses from.
//! * [`client`]: a token-configured connection to an engine, as workers and the control
//!   plane use it.
//! * [`duration`]: Hatchet's duration strings (`"60s"`, `"5m"`, `"1h30m"`).

pub mod client;
pub mod duration;
pub mod token;

/// Generated protocol code. The v0 services live in the empty package, so their paths are
/// `/Dispatcher/Register` and so on; the v1 ones in package `v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("_");

    pub mod v1 {
        tonic::include_proto!("v1");
    }
}

/// The version the embedded engine reports from `GetVersion`. SDKs switch to their legacy
/// protocol below v0.78.23 and to the durable-task protocol at v0.80.0 and later, which we
/// do not implement, so the answer must stay in between.
pub const ENGINE_PROTOCOL_VERSION: &str = "v0.79.0";
