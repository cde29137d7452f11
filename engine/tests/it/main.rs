//! The engine over real gRPC and REST against a real PostgreSQL (a fresh database per test).

mod control;
mod crons;
mod failures;
mod harness;
mod operations;
mod runs;
mod scheduling;
mod streams;
mod surface;
