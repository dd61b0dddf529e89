#!/usr/bin/env bash
# Fetches the browser bundles GraphiQL needs from npm into api/vendor/graphiql/, unmodified:
# GraphiQL's UMD build and stylesheet (which bundle the graphql-ws client and inline their
# fonts), React and ReactDOM's UMD builds, each package's license, and a manifest of
# versions, npm integrity hashes and sha256 sums. The `keystone` binary embeds these files so
# that GraphiQL works without internet access. Re-run after changing a version below.
set -euo pipefail

GRAPHIQL_VERSION=3.9.0 # the last major version with a UMD build
REACT_VERSION=18.3.1   # React 19 ships no UMD build

dest="$(cd "$(dirname "$0")/.." && pwd)/vendor/graphiql"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --json --silent "graphiql@$GRAPHIQL_VERSION" "react@$REACT_VERSION" "react-dom@$REACT_VERSION" >packs.json
for tarball in *.tgz; do
  mkdir -p "${tarball%.tgz}"
  tar xzf "$tarball" -C "${tarball%.tgz}"
done

mkdir -p "$dest"
rm -f "$dest"/*
cp "graphiql-$GRAPHIQL_VERSION/package/dist/index.umd.js" "$dest/graphiql.umd.js"
cp "graphiql-$GRAPHIQL_VERSION/package/dist/style.css" "$dest/graphiql.css"
cp "graphiql-$GRAPHIQL_VERSION/package/LICENSE" "$dest/LICENSE.graphiql"
cp "react-$REACT_VERSION/package/umd/react.production.min.js" "$dest/react.production.min.js"
cp "react-$REACT_VERSION/package/LICENSE" "$dest/LICENSE.react"
cp "react-dom-$REACT_VERSION/package/umd/react-dom.production.min.js" "$dest/react-dom.production.min.js"
cp "react-dom-$REACT_VERSION/package/LICENSE" "$dest/LICENSE.react-dom"

node -e '
  const packs = JSON.parse(require("fs").readFileSync("packs.json", "utf8"));
  const lines = ["# Vendored from the npm registry by api/scripts/vendor-graphiql.sh; do not edit.", ""];
  for (const p of packs) {
    const license = require(`./${p.name}-${p.version}/package/package.json`).license;
    lines.push(`${p.name}@${p.version} ${p.integrity} license: ${license}`);
  }
  require("fs").writeFileSync(process.argv[1], lines.join("\n") + "\n");
' "$dest/VERSIONS"
(cd "$dest" && sha256sum graphiql.umd.js graphiql.css react.production.min.js react-dom.production.min.js >SHA256SUMS)
echo "vendored into $dest:"
cat "$dest/VERSIONS" "$dest/SHA256SUMS"
