//! Traces to plain numbers: attention views, fidelity metrics and cost.

pub mod attention;
pub mod cost;
pub mod metrics;
