//! Integration tests of the server: the API against a real PostgreSQL (a fresh database per
//! test), and the real `sfp-server` binary managing its own PostgreSQL cluster.

mod access;
mod api;
mod auth;
mod credentials;
mod doc_store;
mod environment_locks;
mod environments;
mod identity_cache;
mod key_value;
mod locks;
mod openapi;
mod pool;
mod stack;
mod statement_pool;
mod supabase_clients;
mod support;
mod teams;
mod write_batch;
