//! Load over HTTP with `wrk` (Debian's package `wrk`; `apt-get install wrk`): a fixed number
//! of connections, each sending its next request when the previous answer arrives. A Lua
//! script made per workload chooses each request, counts GraphQL errors inside 200
//! responses and successful writes, and prints one JSON line when done.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::Measured;

pub const W1_QUERY: &str = "{ repositories(first: 50) { nodes { id apps(first: 100) { nodes { id name status currentPort deployments(first: 10) { nodes { id status imageTag createdAt } } } } } } }";
pub const W2_QUERY: &str = "query($name: String!) { app(name: $name) { id name repository { name gitUrl } deployments(first: 5) { nodes { id status imageTag createdAt } } } }";
pub const W5_QUERY: &str = "{ deployments(first: 50, filter: { status: [FAILED] }) { totalCount nodes { id createdAt errorSummary app { name } } } }";
pub const W3_MUTATION: &str =
    "mutation($id: ID!) { deployApp(input: { appId: $id }) { deployment { id status } } }";

/// What a workload sends, by share of requests.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    pub w1: f64,
    pub w2: f64,
    pub w3: f64,
    pub w5: f64,
}

fn lua_string(text: &str) -> String {
    // A Lua long string cannot contain its own closing bracket; JSON never has "]==]".
    format!("[==[{text}]==]")
}

/// The Lua script for `mix`, with the app names (W2) and app IDs (W3) to draw from.
fn script(mix: Mix, token: &str, app_names: &[String], app_ids: &[String]) -> String {
    let body = |query: &str, variables: Value| {
        json!({ "query": query, "variables": variables }).to_string()
    };
    let names: Vec<String> = app_names
        .iter()
        .map(|n| lua_string(&body(W2_QUERY, json!({ "name": n }))))
        .collect();
    let ids: Vec<String> = app_ids
        .iter()
        .map(|id| lua_string(&body(W3_MUTATION, json!({ "id": id }))))
        .collect();
    format!(
        r#"
local w1_body = {w1_body}
local w5_body = {w5_body}
local w2_bodies = {{ {names} }}
local w3_bodies = {{ {ids} }}
local w1_share, w2_share, w5_share = {w1}, {w2}, {w5}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {authorization}
local threads = {{}}
local next_id = 1
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(1000 + id)
  errors = 0
  writes = 0
end
function request()
  local r = math.random()
  local body
  if r < w1_share then
    body = w1_body
  elseif r < w1_share + w2_share then
    body = w2_bodies[math.random(#w2_bodies)]
  elseif r < w1_share + w2_share + w5_share then
    body = w5_body
  else
    body = w3_bodies[math.random(#w3_bodies)]
  end
  return wrk.format(nil, "/graphql", nil, body)
end
function response(status, headers, body)
  if status ~= 200 or string.find(body, '"errors"', 1, true) then
    errors = errors + 1
  elseif string.find(body, '"deployApp"', 1, true) then
    writes = writes + 1
  end
end
function done(summary, latency, requests)
  local e, w = 0, 0
  for _, t in ipairs(threads) do
    e = e + t:get("errors")
    w = w + t:get("writes")
  end
  local s = summary.errors
  io.write(string.format('{{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"graphql_errors":%d,"socket_errors":%d,"writes":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e,
    s.connect + s.read + s.write + s.timeout, w))
end
"#,
        w1_body = lua_string(&body(W1_QUERY, json!({}))),
        w5_body = lua_string(&body(W5_QUERY, json!({}))),
        authorization = lua_string(&format!("Bearer {token}")),
        names = names.join(", "),
        ids = ids.join(", "),
        w1 = mix.w1,
        w2 = mix.w2,
        w5 = mix.w5,
    )
}

/// What one `wrk` run reports.
pub struct WrkRun {
    pub measured: Measured,
    /// Successful `deployApp` responses.
    pub writes: u64,
}

/// Where to send the load, and the token to send it with.
pub struct Endpoint<'a> {
    pub base_url: &'a str,
    pub token: &'a str,
}

/// Runs `wrk` against `endpoint` for `duration` with `connections` connections.
pub async fn run(
    endpoint: &Endpoint<'_>,
    mix: Mix,
    app_names: &[String],
    app_ids: &[String],
    connections: u32,
    duration: Duration,
    dir: &Path,
) -> std::io::Result<WrkRun> {
    let path = dir.join("workload.lua");
    std::fs::write(&path, script(mix, endpoint.token, app_names, app_ids))?;
    let output = tokio::process::Command::new("wrk")
        .args(["--threads", "2", "--connections", &connections.to_string()])
        .args(["--duration", &format!("{}s", duration.as_secs().max(1))])
        .args(["--timeout", "10s", "--script"])
        .arg(&path)
        .arg(format!("{}/graphql", endpoint.base_url))
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "wrk printed no report:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            ))
        })?;
    let get = |key: &str| report[key].as_u64().unwrap_or_default();
    let seconds = get("duration_us") as f64 / 1e6;
    Ok(WrkRun {
        measured: Measured {
            requests: get("requests"),
            requests_per_second: get("requests") as f64 / seconds.max(1e-9),
            p50_ms: get("p50_us") as f64 / 1e3,
            p99_ms: get("p99_us") as f64 / 1e3,
            errors: get("graphql_errors") + get("socket_errors"),
        },
        writes: get("writes"),
    })
}
