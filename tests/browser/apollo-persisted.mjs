// A stock Apollo Client with its persisted-query link (SHA-256 hashes, hashed queries over
// GET) against /graphql. Prints one line per outcome, and the documents it hashed as a
// manifest (hash → the exact text it sends), which the test stores with
// `keystone documents add`.
// Usage: node apollo-persisted.mjs <base-url> <token>
import { ApolloClient, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { PersistedQueryLink } from "@apollo/client/link/persisted-queries";
import { print } from "graphql";
import { createHash } from "node:crypto";

const [base, token] = process.argv.slice(2);
const requests = [];
const manifest = {};
const persisted = new PersistedQueryLink({
  generateHash: (document) => {
    const text = print(document);
    const hash = createHash("sha256").update(text).digest("hex");
    manifest[hash] = text;
    return hash;
  },
  useGETForHashedQueries: true,
});
const http = new HttpLink({
  uri: `${base}/graphql`,
  headers: { authorization: `Bearer ${token}` },
  fetch: (url, init) => {
    requests.push(init?.method ?? "GET");
    return fetch(url, init);
  },
});
const client = new ApolloClient({ link: persisted.concat(http), cache: new InMemoryCache() });

async function run(name, query) {
  requests.length = 0;
  try {
    const result = await client.query({ query, fetchPolicy: "network-only" });
    console.log(`${name} ok ${requests.join(",")} ${JSON.stringify(result.data)}`);
  } catch (error) {
    const codes = (error.errors ?? []).map((e) => e.extensions?.code).join(",");
    console.log(`${name} refused ${requests.join(",")} ${codes || error.message}`);
  }
}

await run("apps", gql`query Apps { apps(first: 5) { nodes { name } } }`);
await run("me", gql`query Me { viewer { name } }`);
console.log(`manifest ${JSON.stringify(manifest)}`);
