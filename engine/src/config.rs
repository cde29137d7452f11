//! What an engine instance needs to know.

use std::time::Duration;

use sfp_protocol::token::TokenKey;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The tenant this engine serves (tokens must name it).
    pub tenant_id: Uuid,
    /// Signs and checks tenant tokens.
    pub token_key: TokenKey,
    /// The gRPC address clients are told to use (`host:port`, no scheme).
    pub grpc_address: String,
    /// The REST base URL clients are told to use.
    pub server_url: String,
    /// A worker silent this long loses its assignments.
    pub heartbeat_timeout: Duration,
    /// An attempt its worker has not reported STARTED for this long after assignment (the
    /// assignment was lost on the way) is queued again.
    pub start_timeout: Duration,
    /// How often the assigner looks at the queue when nothing wakes it.
    pub poll_interval: Duration,
    /// Most queue items claimed in one assignment pass.
    pub assign_batch: i64,
    /// How often timeouts and lost workers are looked for.
    pub sweep_interval: Duration,
    /// The shortest sleep of the scheduler between two looks for due work.
    pub cron_interval: Duration,
    /// Cron ticks missed (no engine running) are fired late if at most this old.
    pub cron_catch_up: Duration,
}

impl EngineConfig {
    pub fn new(tenant_id: Uuid, token_key: TokenKey, grpc_address: String, server_url: String) -> Self {
        EngineConfig {
            tenant_id,
            token_key,
            grpc_address,
            server_url,
            heartbeat_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(15),
            poll_interval: Duration::from_secs(1),
            assign_batch: 500,
            sweep_interval: Duration::from_secs(1),
            cron_interval: Duration::from_millis(250),
            cron_catch_up: Duration::from_secs(3600),
        }
    }
}
