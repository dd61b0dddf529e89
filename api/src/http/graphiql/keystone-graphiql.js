// Starts GraphiQL against this server: queries and mutations over HTTP POST, subscriptions
// over the graphql-transport-ws WebSocket. Everything is served by Keystone itself.
(function () {
  "use strict";
  var wsScheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  var fetcher = GraphiQL.createFetcher({
    url: window.location.origin + "/graphql",
    subscriptionUrl: wsScheme + window.location.host + "/graphql/ws",
  });
  var defaultQuery = [
    "# Welcome to Keystone. Press the run button (or Ctrl-Enter) to list repositories,",
    "# their apps and each app's latest deployment. The docs explorer describes every type.",
    "query Repositories {",
    "  repositories(first: 10) {",
    "    totalCount",
    "    nodes {",
    "      id",
    "      name",
    "      gitUrl",
    "      apps(first: 5) {",
    "        nodes { name status url latestDeployment { status createdAt } }",
    "      }",
    "    }",
    "  }",
    "}",
    "",
  ].join("\n");
  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: true,
    })
  );
})();
