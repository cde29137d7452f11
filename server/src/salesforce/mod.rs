//! Salesforce: auth URLs, the HTTP calls to Salesforce, and the registered orgs.

pub mod auth_url;
pub mod client;
pub mod orgs;

pub use client::{SalesforceClient, SalesforceError};
pub use orgs::{Actor, OrgError, Orgs, SalesforceOrg};
