//! A Hatchet client connection: what a worker or the control plane needs to call an engine
//! (ours or a real Hatchet cluster) with a tenant token.
//!
//! The token carries the engine's addresses (`grpc_broadcast_address`, `server_url`) the way
//! the official SDKs read them; `HATCHET_CLIENT_HOST_PORT`, `HATCHET_CLIENT_SERVER_URL` and
//! `HATCHET_CLIENT_TLS_STRATEGY` override them as in the SDKs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use uuid::Uuid;

use crate::pb;
use crate::token::{TokenError, read_unverified};

/// How the gRPC connection is secured (`HATCHET_CLIENT_TLS_STRATEGY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsStrategy {
    /// Plaintext, for an engine on loopback (the embedded one).
    None,
    /// TLS with the web's root certificates, as Hatchet Cloud and most clusters need.
    #[default]
    Tls,
}

impl FromStr for TlsStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Self::None),
            "tls" => Ok(Self::Tls),
            other => Err(format!("TLS strategy {other:?} is not supported (use none or tls)")),
        }
    }
}

/// Where and how to reach an engine.
#[derive(Clone)]
pub struct ClientConfig {
    pub token: String,
    /// `host:port` of the gRPC API; the token's `grpc_broadcast_address` when unset.
    pub grpc_address: Option<String>,
    /// Base URL of the REST API; the token's `server_url` when unset.
    pub server_url: Option<String>,
    pub tls: TlsStrategy,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("token", &"<redacted>")
            .field("grpc_address", &self.grpc_address)
            .field("server_url", &self.server_url)
            .field("tls", &self.tls)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the engine token is not usable: {0}")]
    Token(#[from] TokenError),
    #[error("the engine address {address:?} is not valid: {reason}")]
    Address { address: String, reason: String },
}

/// Adds the tenant token to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// A lazily connected channel to an engine; cheap to clone. Calls reconnect by themselves
/// after the engine comes back.
#[derive(Clone)]
pub struct HatchetClient {
    channel: Channel,
    bearer: Bearer,
    tenant_id: Uuid,
    server_url: String,
    grpc_address: String,
}

impl HatchetClient {
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        let claims = read_unverified(&config.token)?;
        let tenant_id = claims.tenant_id()?;
        let grpc_address = config.grpc_address.clone().unwrap_or_else(|| claims.grpc_broadcast_address.clone());
        let server_url = config.server_url.clone().unwrap_or_else(|| claims.server_url.clone());
        let scheme = match config.tls {
            TlsStrategy::None => "http",
            TlsStrategy::Tls => "https",
        };
        let address_error = |reason: String| ClientError::Address { address: grpc_address.clone(), reason };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{grpc_address}"))
            .map_err(|e| address_error(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if config.tls == TlsStrategy::Tls {
            let host = grpc_address.rsplit_once(':').map_or(grpc_address.as_str(), |(h, _)| h).to_string();
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_webpki_roots().domain_name(host))
                .map_err(|e| address_error(e.to_string()))?;
        }
        let value = MetadataValue::try_from(format!("Bearer {}", config.token)).map_err(|_| {
            ClientError::Token(TokenError::Invalid("the token has characters a header cannot carry".into()))
        })?;
        Ok(Self {
            channel: endpoint.connect_lazy(),
            bearer: Bearer(value),
            tenant_id,
            server_url: server_url.trim_end_matches('/').to_string(),
            grpc_address,
        })
    }

    pub fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    /// Base URL of the engine's REST API (no trailing slash).
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    pub fn grpc_address(&self) -> &str {
        &self.grpc_address
    }

    /// The `Authorization` header value REST calls need.
    pub fn authorization(&self) -> &str {
        self.bearer.0.to_str().unwrap_or_default()
    }

    pub fn dispatcher(&self) -> pb::dispatcher_client::DispatcherClient<Authed> {
        pb::dispatcher_client::DispatcherClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn events(&self) -> pb::events_service_client::EventsServiceClient<Authed> {
        pb::events_service_client::EventsServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn workflows(&self) -> pb::workflow_service_client::WorkflowServiceClient<Authed> {
        pb::workflow_service_client::WorkflowServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    pub fn admin(&self) -> pb::v1::admin_service_client::AdminServiceClient<Authed> {
        pb::v1::admin_service_client::AdminServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
}

impl fmt::Debug for HatchetClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HatchetClient")
            .field("tenant_id", &self.tenant_id)
            .field("grpc_address", &self.grpc_address)
            .field("server_url", &self.server_url)
            .finish_non_exhaustive()
    }
}

/// A protobuf timestamp for now.
pub fn now() -> prost_types::Timestamp {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32 }
}
