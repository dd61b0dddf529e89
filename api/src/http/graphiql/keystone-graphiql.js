// Starts GraphiQL against this server: queries and mutations over HTTP POST, subscriptions
// over the graphql-transport-ws WebSocket. Everything is served by Keystone itself.
//
// Signing in: every operation needs an API token. The bar above GraphiQL takes one and
// keeps it in this tab's sessionStorage (a reload keeps it; closing the tab forgets it,
// and no other page or tab of this origin can read it later); a link ending in `#token=<secret>` (printed by
// the server's first start) signs in directly. The fragment is never sent to the server and
// is removed from the address bar at once.
(function () {
  "use strict";
  var STORAGE_KEY = "keystone.token";
  var wsScheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  var bar = document.getElementById("keystone-auth");
  var generation = 0;

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

  function storedToken() {
    try {
      return window.sessionStorage.getItem(STORAGE_KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function storeToken(token) {
    try {
      if (token) {
        window.sessionStorage.setItem(STORAGE_KEY, token);
      } else {
        window.sessionStorage.removeItem(STORAGE_KEY);
      }
    } catch (e) {
      // Private mode without storage: the token lives until the page is closed.
    }
  }

  // Returns whether the address carried a token.
  function takeTokenFromFragment() {
    var match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    if (!match) {
      return false;
    }
    storeToken(decodeURIComponent(match[1]));
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
    return true;
  }

  function renderGraphiQL(token) {
    var authorization = token ? { Authorization: "Bearer " + token } : {};
    var fetcher = GraphiQL.createFetcher({
      url: window.location.origin + "/graphql",
      subscriptionUrl: wsScheme + window.location.host + "/graphql/ws",
      headers: authorization,
      wsConnectionParams: authorization,
    });
    generation += 1;
    root.render(
      React.createElement(GraphiQL, {
        key: "session-" + generation,
        fetcher: fetcher,
        defaultQuery: defaultQuery,
        defaultEditorToolsVisibility: true,
      })
    );
  }

  function element(tag, attributes, children) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) {
      node.setAttribute(name, attributes[name]);
    });
    (children || []).forEach(function (child) {
      node.append(child);
    });
    return node;
  }

  function showSignIn(message) {
    var input = element("input", {
      type: "password",
      id: "keystone-token",
      placeholder: "kst_…",
      autocomplete: "off",
      "aria-label": "API token",
    });
    var button = element("button", { type: "submit" }, ["Sign in"]);
    var form = element("form", {}, [
      element("strong", {}, ["Keystone"]),
      element("label", { for: "keystone-token" }, ["API token"]),
      input,
      button,
      element("span", { class: "keystone-hint", id: "keystone-auth-status" }, [
        message ||
          "The first start printed an admin token and saved it to keystone-admin.token; " +
            "or create one: keystone token create --name me --role admin",
      ]),
    ]);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      signIn(input.value.trim());
    });
    bar.replaceChildren(form);
  }

  function showSignedIn(viewer) {
    var signOut = element("button", { type: "button", id: "keystone-sign-out" }, ["Sign out"]);
    signOut.addEventListener("click", function () {
      storeToken("");
      showSignIn("Signed out. The token is still valid; revoke it with revokeApiToken.");
      renderGraphiQL("");
    });
    bar.replaceChildren(
      element("strong", {}, ["Keystone"]),
      element("span", { id: "keystone-auth-status" }, [
        "Signed in as " + viewer.name + " (" + viewer.role.toLowerCase() + ")",
      ]),
      signOut
    );
  }

  // Checks a token with the `viewer` query, then (re)starts GraphiQL with it.
  function signIn(token) {
    if (!token) {
      showSignIn("Paste a token first.");
      renderGraphiQL("");
      return;
    }
    fetch("/graphql", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/graphql-response+json",
        Authorization: "Bearer " + token,
      },
      body: JSON.stringify({ query: "{ viewer { name role } }" }),
    })
      .then(function (response) {
        return response.json();
      })
      .then(function (body) {
        if (body.data && body.data.viewer) {
          storeToken(token);
          showSignedIn(body.data.viewer);
          renderGraphiQL(token);
        } else {
          storeToken("");
          var reason = body.errors && body.errors[0] ? body.errors[0].message : "rejected";
          showSignIn("Token not accepted: " + reason);
          renderGraphiQL("");
        }
      })
      .catch(function (error) {
        showSignIn("Cannot reach the server: " + error);
        renderGraphiQL(token);
      });
  }

  // A sign-in link opened in a tab that already shows GraphiQL.
  window.addEventListener("hashchange", function () {
    if (takeTokenFromFragment()) {
      signIn(storedToken());
    }
  });

  takeTokenFromFragment();
  var token = storedToken();
  if (token) {
    signIn(token);
  } else {
    showSignIn();
    renderGraphiQL("");
  }
})();
