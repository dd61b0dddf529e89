//! Hardening: one module per class of attack, each sent as an attacker would, over HTTP or
//! WebSocket, against the real server; what each asserts is what the README's "Security
//! model" promises.

mod document_cost;
mod echoes;
mod files;
mod git_inputs;
mod inputs;
mod log_reads;
mod metrics_labels;
mod notifications;
mod operation_ids;
mod proxies;
mod rate_limits;
mod switches;
mod timeouts;
mod websockets;
