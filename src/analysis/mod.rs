//! Traces to plain numbers: attention views and (later) fidelity metrics and cost.

pub mod attention;
