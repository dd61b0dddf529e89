// A stock GraphQL WebSocket client (graphql-ws) against /graphql/ws: a query, then a
// subscription that receives the deployment created by a mutation.
// Usage: node stock-client.mjs <base-url> <app-id> <token>
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const [base, appId, token] = process.argv.slice(2);
const url = base.replace(/^http/, "ws") + "/graphql/ws";
const fail = (message) => {
  console.error(`FAIL: ${message}`);
  process.exit(1);
};

// Without a token the server closes the connection during the handshake.
const refused = await new Promise((resolve) => {
  const anonymous = createClient({ url, webSocketImpl: WebSocket, retryAttempts: 0, lazy: false,
    onNonLazyError: (error) => resolve(error) });
  anonymous.on("connected", () => resolve(null));
});
if (!refused || !String(refused.reason ?? refused).includes("UNAUTHENTICATED")) {
  fail(`connection without a token: ${refused && (refused.reason ?? refused)}`);
}
console.log("anonymous refused");

// The token goes in the connection_init payload, as graphql-ws clients send it.
const client = createClient({
  url, webSocketImpl: WebSocket, retryAttempts: 0,
  connectionParams: { Authorization: `Bearer ${token}` },
});
setTimeout(() => fail("timed out"), 20000).unref();

const query = await new Promise((resolve, reject) => {
  let result;
  client.subscribe({ query: "{ apps { nodes { name } } }" }, {
    next: (value) => (result = value),
    error: reject,
    complete: () => resolve(result),
  });
});
if (query.data?.apps?.nodes?.[0]?.name !== "browser-app") fail(`query: ${JSON.stringify(query)}`);
console.log("query ok");

const events = client.iterate({
  query: `subscription($app: ID) { deploymentUpdated(appId: $app) { status app { name } } }`,
  variables: { app: appId },
});
// The subscription is registered once the server has acknowledged it; give it a moment.
const first = events.next();
await new Promise((r) => setTimeout(r, 300));
const response = await fetch(base + "/graphql", {
  method: "POST",
  headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
  body: JSON.stringify({ query: `mutation { deployApp(input: { appId: "${appId}" }) { deployment { id } } }` }),
});
if (!response.ok) fail(`deployApp: ${response.status}`);
const event = (await first).value;
if (event?.data?.deploymentUpdated?.status !== "QUEUED" || event.data.deploymentUpdated.app.name !== "browser-app") {
  fail(`event: ${JSON.stringify(event)}`);
}
console.log("subscription ok");
await events.return();
await client.dispose();
