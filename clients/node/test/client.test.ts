// The TypeScript client against a real broker and the control-plane emulator.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { status } from "@grpc/grpc-js";

import { type Authorization, BrokerClient, BrokerError, httpHeaders } from "../src/index.js";
import { type RunningBroker, startBroker } from "./broker.js";

const CALL_MS = 10_000;
const execFileAsync = promisify(execFile);

describe("BrokerClient against a real broker", () => {
  let broker: RunningBroker;
  let client: BrokerClient;

  before(async () => {
    broker = await startBroker();
    client = new BrokerClient(broker.address, { timeoutMs: CALL_MS });
  });

  after(async () => {
    client?.close();
    await broker?.stop();
  });

  const protectedCall = (auth: Authorization): Promise<Response> =>
    fetch(`${broker.controlPlaneUrl}/protected`, {
      headers: httpHeaders(auth),
      signal: AbortSignal.timeout(CALL_MS),
    });

  const revoke = async (taskId: string): Promise<void> => {
    const response = await fetch(`${broker.emulatorRoot}/_emulator/revoke`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ task_id: taskId }),
      signal: AbortSignal.timeout(CALL_MS),
    });
    assert.equal(response.status, 200, await response.text());
  };

  it("gets a header the control plane accepts", async () => {
    const auth = await client.getAuthorization();

    const response = await protectedCall(auth);

    assert.equal(response.status, 200);
    const body = (await response.json()) as { scheme: string; task_id: string };
    assert.equal(body.scheme, "AgentAssertion");
    assert.equal(body.task_id, auth.taskId);
    assert.equal(auth.scheme, "AgentAssertion");
    assert.equal(auth.taskKind, "background");
    assert.equal(auth.fallbackReason, "none");
    assert.equal(auth.headers["ChatGPT-Account-ID"], "acct-dev");
    assert.ok(auth.expiresAt instanceof Date && auth.expiresAt.getTime() > Date.now());
  });

  it("gets a thread's own task and a Bearer on request", async () => {
    const thread = await client.getAuthorization({ threadId: "thread-42" });
    const bearer = await client.getAuthorization({ bearerOnly: true });

    assert.equal(thread.taskKind, "thread");
    assert.equal(thread.threadId, "thread-42");
    assert.equal((await protectedCall(thread)).status, 200);
    assert.equal(bearer.scheme, "Bearer");
    assert.equal(bearer.fallbackReason, "requested");
    assert.equal((await protectedCall(bearer)).status, 200);
  });

  it("recovers from a 401 with one ReportRejection", async () => {
    const auth = await client.getAuthorization({ threadId: "thread-401" });
    await revoke(auth.taskId);
    const refused = await protectedCall(auth);
    assert.equal(refused.status, 401);
    assert.equal(((await refused.json()) as { reason: string }).reason, "task_revoked");

    const replacement = await client.reportRejection(auth, { httpStatus: refused.status });

    assert.notEqual(replacement.taskId, auth.taskId);
    assert.equal(replacement.threadId, "thread-401");
    assert.equal((await protectedCall(replacement)).status, 200);
    assert.deepEqual(await client.getAuthorization({ threadId: "thread-401" }), replacement);
  });

  it("watches: the current header at once, the replacement after a rejection", async () => {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), CALL_MS);
    const seen: Authorization[] = [];
    try {
      for await (const auth of client.watch({ threadId: "thread-watch" }, abort.signal)) {
        seen.push(auth);
        if (seen.length === 1) {
          await revoke(auth.taskId);
          await client.reportRejection(auth);
        } else if (auth.taskId !== seen[0]?.taskId) {
          break;
        }
      }
    } finally {
      clearTimeout(timer);
    }

    assert.ok(!abort.signal.aborted, "no replacement arrived on the stream in time");
    assert.ok(seen.length >= 2);
    assert.equal((await protectedCall(seen.at(-1)!)).status, 200);
  });

  it("ends a watch when its signal aborts", async () => {
    const abort = new AbortController();
    let count = 0;
    for await (const auth of client.watch({}, abort.signal)) {
      assert.equal(auth.scheme, "AgentAssertion");
      count += 1;
      abort.abort();
    }
    assert.equal(count, 1);
  });

  it("reports errors with the status code and the broker's reason", async () => {
    await assert.rejects(client.getAuthorization({ threadId: "has whitespace" }), (error) => {
      assert.ok(error instanceof BrokerError);
      assert.equal(error.code, status.INVALID_ARGUMENT);
      assert.equal(error.reason, "INVALID_ARGUMENT");
      assert.equal(error.retryable, false);
      return true;
    });
    await assert.rejects(client.getAuthorization({ identity: "nobody" }), (error) => {
      assert.ok(error instanceof BrokerError);
      assert.equal(error.codeName, "NOT_FOUND");
      assert.equal(error.reason, "UNKNOWN_IDENTITY");
      return true;
    });
  });

  it("reports an unreachable broker as retryable UNAVAILABLE", async () => {
    const nowhere = new BrokerClient("127.0.0.1:1", { timeoutMs: 2_000 });
    try {
      await assert.rejects(nowhere.getAuthorization(), (error) => {
        assert.ok(error instanceof BrokerError);
        assert.ok(error.retryable, error.message);
        return true;
      });
    } finally {
      nowhere.close();
    }
  });
});

describe("README", () => {
  let broker: RunningBroker;

  before(async () => {
    broker = await startBroker();
  });

  after(async () => {
    await broker?.stop();
  });

  it("shows examples/worker.ts verbatim, in under 20 lines", async () => {
    const readme = await readFile(new URL("../../README.md", import.meta.url), "utf8");
    const example = await readFile(new URL("../../examples/worker.ts", import.meta.url), "utf8");
    const block = /```ts\n([\s\S]*?)```/.exec(readme)?.[1];

    assert.equal(block, example);
    assert.ok(example.trim().split("\n").length < 20);
  });

  it("runs the worker, also through a 401", async () => {
    const env = {
      ...process.env,
      BROKER_ADDRESS: broker.address,
      CONTROLPLANE_URL: broker.controlPlaneUrl,
    };
    const worker = fileURLToPath(new URL("../examples/worker.js", import.meta.url));
    const run = async (): Promise<string> =>
      (await execFileAsync(process.execPath, [worker], { env, timeout: CALL_MS })).stdout;

    assert.equal(await run(), "200 true\n");
    const client = new BrokerClient(broker.address, { timeoutMs: CALL_MS });
    try {
      const auth = await client.getAuthorization({ threadId: "thread-42" });
      const revoked = await fetch(`${broker.emulatorRoot}/_emulator/revoke`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ task_id: auth.taskId }),
        signal: AbortSignal.timeout(CALL_MS),
      });
      assert.equal(revoked.status, 200);
    } finally {
      client.close();
    }
    const failedBefore = await verificationsFailed();
    assert.equal(await run(), "200 true\n");
    assert.equal(await verificationsFailed(), failedBefore + 1, "the worker met exactly one 401");
  });

  const verificationsFailed = async (): Promise<number> => {
    const stats = await fetch(`${broker.emulatorRoot}/_emulator/stats`, {
      signal: AbortSignal.timeout(CALL_MS),
    });
    return ((await stats.json()) as { verifications_failed: number }).verifications_failed;
  };
});
