//! Pipeline machinery that runs inside the control plane.

pub mod approvals;
