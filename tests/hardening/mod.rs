//! Hardening: one module per class of attack, each sent as an attacker would, over HTTP or
//! WebSocket, against the real server; what each asserts is what the README's "Security
//! model" promises.

mod document_cost;
mod echoes;
mod git_inputs;
mod log_reads;
mod metrics_labels;
mod notifications;
mod operation_ids;
mod proxies;
mod timeouts;
