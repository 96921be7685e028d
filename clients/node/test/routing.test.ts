// Workspace routing: routeUrl on Authorization values, and the README's fetch recipe against real
// HTTP servers on loopback (the broker does not hand out routes yet, so no broker is needed here).

import assert from "node:assert/strict";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, describe, it } from "node:test";

import { fromMessage } from "../src/authorization.js";
import { Authorization as AuthorizationMessage } from "../src/gen/credential_broker/v1/broker.js";
import { type Authorization, httpHeaders, routeUrl } from "../src/index.js";

const ROUTING_HEADER = "x-openai-account-routing-override";
const PATH = "/backend-api/wham/tasks?limit=5&cursor=a%2Fb";
const CALL_MS = 10_000;

function authorization(backendOrigin: string, headers: Record<string, string> = {}): Authorization {
  return Object.freeze({
    headerValue: "AgentAssertion secret-value",
    scheme: "AgentAssertion",
    identity: "main",
    agentRuntimeId: "agent-1",
    taskId: "task-1",
    taskKind: "background",
    threadId: "",
    issuedAt: undefined,
    expiresAt: undefined,
    fallbackReason: "none",
    headers: Object.freeze({ "ChatGPT-Account-ID": "acct-1", ...headers }),
    backendOrigin,
  });
}

describe("routeUrl", () => {
  const cases: [origin: string, url: string, routed: string][] = [
    [
      "https://us.chatgpt.example:8443",
      "https://chatgpt.example/backend-api/me?x=1",
      "https://us.chatgpt.example:8443/backend-api/me?x=1",
    ],
    [
      "https://us.chatgpt.example",
      "https://chatgpt.example:444/backend-api/me",
      "https://us.chatgpt.example/backend-api/me",
    ],
    [
      "http://127.0.0.1:8080",
      "https://chatgpt.example/backend-api/a%2Fb?q=1&r=%2F#frag",
      "http://127.0.0.1:8080/backend-api/a%2Fb?q=1&r=%2F#frag",
    ],
    ["https://us.chatgpt.example", "http://user:pw@127.0.0.1:9/p", "https://us.chatgpt.example/p"],
  ];
  for (const [origin, url, routed] of cases) {
    it(`routes ${url} to ${origin}`, () => {
      const input = new URL(url);

      const result = routeUrl(authorization(origin), input);

      assert.equal(result.href, routed);
      assert.notEqual(result, input);
      assert.equal(input.href, new URL(url).href, "the input URL was modified");
      assert.equal(routeUrl(authorization(origin), url).href, routed);
    });
  }

  it("reads backendOrigin from the broker's message", () => {
    const routed = fromMessage(
      AuthorizationMessage.fromPartial({
        headerValue: "Bearer x",
        backendOrigin: "https://us.chatgpt.example",
        headers: { [ROUTING_HEADER]: "us" },
      }),
    );
    const plain = fromMessage(AuthorizationMessage.fromPartial({ headerValue: "Bearer x" }));

    assert.equal(routed.backendOrigin, "https://us.chatgpt.example");
    assert.equal(httpHeaders(routed)[ROUTING_HEADER], "us");
    assert.equal(plain.backendOrigin, "");
  });

  it("returns an unchanged copy without a route", () => {
    const input = new URL("https://user:pw@chatgpt.example:444/backend-api/me?x=1#f");

    const result = routeUrl(authorization(""), input);

    assert.equal(result.href, input.href);
    assert.notEqual(result, input);
  });

  it("refuses an origin that is not scheme://host[:port]", () => {
    for (const origin of [
      "us.chatgpt.example",
      "https://us.chatgpt.example/backend-api",
      "https://h?x",
      "foo://h",
    ]) {
      assert.throws(() => routeUrl(authorization(origin), "https://chatgpt.example/x"), TypeError, origin);
    }
  });
});

interface Seen {
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
}

/** A real HTTP server on 127.0.0.1 that records each request and answers from a script. */
async function recorder(...answers: [status: number, headers: Record<string, string>][]): Promise<{
  origin: string;
  seen: Seen[];
  server: Server;
}> {
  const seen: Seen[] = [];
  const server = createServer((request, response) => {
    seen.push({ url: request.url ?? "", headers: request.headers });
    const [status, headers] = answers.shift() ?? [200, {}];
    response.writeHead(status, { ...headers, "Content-Type": "application/json" });
    response.end('{"ok":true}');
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { origin: `http://127.0.0.1:${port}`, seen, server };
}

describe("the README's routed fetch", () => {
  const servers: Server[] = [];
  const serve = async (
    ...answers: [number, Record<string, string>][]
  ): Promise<{ origin: string; seen: Seen[] }> => {
    const started = await recorder(...answers);
    servers.push(started.server);
    return started;
  };

  after(async () => {
    await Promise.all(
      servers.map((server) => {
        server.closeAllConnections();
        return new Promise((resolve) => server.close(resolve));
      }),
    );
  });

  const routedFetch = (auth: Authorization, url: string): Promise<Response> =>
    fetch(routeUrl(auth, url), {
      headers: httpHeaders(auth),
      redirect: auth.backendOrigin ? "error" : "follow",
      signal: AbortSignal.timeout(CALL_MS),
    });

  it("reaches the routed origin with the path, query and routing header", async () => {
    const base = await serve();
    const routed = await serve();
    const auth = authorization(routed.origin, { [ROUTING_HEADER]: "us" });

    const response = await routedFetch(auth, base.origin + PATH);

    assert.equal(response.status, 200);
    assert.equal(base.seen.length, 0);
    assert.equal(routed.seen.length, 1);
    assert.equal(routed.seen[0]?.url, PATH);
    assert.equal(routed.seen[0]?.headers[ROUTING_HEADER], "us");
    assert.equal(routed.seen[0]?.headers.host, routed.origin.replace("http://", ""));
    assert.equal(routed.seen[0]?.headers.authorization, "AgentAssertion secret-value");
  });

  it("does not follow a redirect from the routed origin", async () => {
    const elsewhere = await serve();
    const routed = await serve([302, { Location: `${elsewhere.origin}/elsewhere` }]);
    const auth = authorization(routed.origin, { [ROUTING_HEADER]: "us_cr" });

    await assert.rejects(routedFetch(auth, `http://127.0.0.1:9${PATH}`), TypeError);

    assert.equal(routed.seen.length, 1);
    assert.equal(elsewhere.seen.length, 0);
  });
});
