// The public client: PKCE S256 with Web Crypto, the code traded at IAS, calls to the API.
// Plain JavaScript, no build step. Tokens live in sessionStorage of this tab only.
"use strict";

const KEYS = { verifier: "pkce.verifier", state: "pkce.state", token: "pkce.token" };
const $ = (id) => document.getElementById(id);

function base64url(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(size) {
  return base64url(crypto.getRandomValues(new Uint8Array(size)));
}

async function challengeOf(verifier) {
  // RFC 7636 4.2: BASE64URL(SHA256(ASCII(code_verifier)))
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(digest);
}

function claimsOf(token) {
  // Only for display: the API verifies the token, the page does not need to.
  const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  const bytes = Uint8Array.from(atob(part + "===".slice((part.length + 3) % 4)), (c) =>
    c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

function tampered(token) {
  // The same signature over edited claims: what an attacker who edits a token gets.
  const [header, , signature] = token.split(".");
  const claims = { ...claimsOf(token), email: "mallory@example.com" };
  const payload = base64url(new TextEncoder().encode(JSON.stringify(claims)));
  return `${header}.${payload}.${signature}`;
}

const audiences = (claims) =>
  (Array.isArray(claims.aud) ? claims.aud : [claims.aud]).filter(Boolean).sort();

function show(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text;
}

function fail(text) {
  $("error").hidden = false;
  $("error").textContent = text;
  show("error", "Something went wrong.");
}

async function loadConfig() {
  const answer = await fetch("config.json", { cache: "no-store" });
  if (!answer.ok) throw new Error(`config.json answered ${answer.status}`);
  return answer.json();
}

function redirectUri() {
  return new URL(".", window.location.href).href;
}

async function signIn(config) {
  const verifier = randomText(48);
  const state = randomText(16);
  sessionStorage.setItem(KEYS.verifier, verifier);
  sessionStorage.setItem(KEYS.state, state);
  const query = new URLSearchParams({
    response_type: "code",
    client_id: config.client_id,
    redirect_uri: redirectUri(),
    scope: "openid email",
    code_challenge: await challengeOf(verifier),
    code_challenge_method: "S256",
    state,
  });
  window.location.assign(`${config.authorization_endpoint}?${query}`);
}

async function tradeCode(config, params) {
  const verifier = sessionStorage.getItem(KEYS.verifier);
  const state = sessionStorage.getItem(KEYS.state);
  sessionStorage.removeItem(KEYS.verifier);
  sessionStorage.removeItem(KEYS.state);
  // The code and state leave the address bar (and the history) at once.
  history.replaceState(null, "", redirectUri());
  if (params.get("error")) throw new Error(`IAS refused: ${params.get("error")}`);
  if (!verifier || params.get("state") !== state) throw new Error("unexpected state: sign in again");
  const answer = await fetch(config.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      client_id: config.client_id,
      code: params.get("code"),
      redirect_uri: redirectUri(),
      code_verifier: verifier,
    }),
  });
  const tokens = await answer.json();
  if (!answer.ok) throw new Error(`the token endpoint answered ${answer.status} ${tokens.error}`);
  sessionStorage.setItem(KEYS.token, tokens.id_token);
  return tokens.id_token;
}

async function callApi(config, token) {
  const started = performance.now();
  const answer = await fetch(config.api, { headers: { Authorization: `Bearer ${token}` } });
  const body = await answer.json().catch(() => ({}));
  const challenge = answer.headers.get("WWW-Authenticate") || "";
  return { status: answer.status, body, challenge, ms: performance.now() - started };
}

function addCall(name, call) {
  const row = document.createElement("tr");
  row.id = `call-${$("calls").children.length + 1}`;
  const refused = call.status !== 200;
  const servedBy = refused ? `refused: ${call.body.error || call.status}` : call.body.served_by;
  for (const text of [name, String(call.status), servedBy, `${call.ms.toFixed(0)} ms`]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.append(cell);
  }
  row.className = refused ? "refused" : "ok";
  row.dataset.servedBy = servedBy;
  $("calls").append(row);
}

async function showSession(config, token) {
  const publicClaims = claimsOf(token);
  $("result").hidden = false;
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("call-again").hidden = false;
  $("user").textContent = publicClaims.email || publicClaims.sub;
  $("issuer").textContent = publicClaims.iss;
  $("public-aud").textContent = audiences(publicClaims).join(", ");
  show("calling", "Calling the API…");

  const first = await callApi(config, token);
  addCall("with the public token", first);
  if (first.status !== 200) throw new Error(`the API answered ${first.status}`);
  const exchanged = first.body.aud;
  $("exchanged-aud").textContent = exchanged.join(", ");
  const added = exchanged.filter((aud) => !audiences(publicClaims).includes(aud));
  $("added-aud").textContent = added.join(", ") || "(nothing)";

  addCall("same token again", await callApi(config, token));
  addCall("tampered token", await callApi(config, tampered(token)));
  show("done", "Done: signed in, exchanged once, then served from the cache.");
}

function signOut() {
  // The tokens were this tab's only: forgetting them signs the page out.
  for (const key of Object.values(KEYS)) sessionStorage.removeItem(key);
  $("result").hidden = true;
  $("calls").replaceChildren();
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("call-again").hidden = true;
  $("error").hidden = true;
  show("signed-out", "Signed out.");
}

async function main() {
  const config = await loadConfig();
  $("sign-in").addEventListener("click", () => signIn(config).catch((e) => fail(e.message)));
  $("sign-out").addEventListener("click", signOut);
  $("call-again").addEventListener("click", async () => {
    addCall("again", await callApi(config, sessionStorage.getItem(KEYS.token)));
  });
  const params = new URLSearchParams(window.location.search);
  let token = sessionStorage.getItem(KEYS.token);
  if (params.has("code") || params.has("error")) {
    show("signing-in", "Trading the code for tokens at IAS…");
    token = await tradeCode(config, params);
  }
  if (token) {
    await showSession(config, token);
  } else {
    show("signed-out", "Not signed in.");
  }
}

main().catch((error) => fail(error.message));
