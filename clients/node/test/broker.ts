// Starts a real broker for the tests: `credential-broker dev` (the control-plane emulator plus a
// broker on the embedded store) on free loopback ports, and stops it again.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const START_MS = 30_000;
const STOP_MS = 10_000;

/** The broker's executable: $CREDENTIAL_BROKER_BIN, else the repository's .venv. */
export function brokerBinary(): string {
  const fromEnv = process.env.CREDENTIAL_BROKER_BIN;
  if (fromEnv) return fromEnv;
  // dist/test/broker.js -> the repository root is four levels up
  return fileURLToPath(new URL("../../../../.venv/bin/credential-broker", import.meta.url));
}

export interface RunningBroker {
  /** `127.0.0.1:<port>` of the broker's gRPC server. */
  readonly address: string;
  /** The emulator's `http://127.0.0.1:<port>/backend-api`. */
  readonly controlPlaneUrl: string;
  /** The emulator's root, where the `/_emulator/` test controls live. */
  readonly emulatorRoot: string;
  stop(): Promise<void>;
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), STOP_MS);
  await exited(child);
  clearTimeout(timer);
}

/** Start `credential-broker dev` and wait (bounded) until it prints both addresses. */
export async function startBroker(): Promise<RunningBroker> {
  const binary = brokerBinary();
  if (!existsSync(binary)) {
    throw new Error(`${binary} does not exist: run 'make install' (or set CREDENTIAL_BROKER_BIN)`);
  }
  const child = spawn(
    binary,
    ["dev", "--listen", "127.0.0.1:0", "--emulator-listen", "127.0.0.1:0", "--log-level", "warning"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  // If this test process exits without running stop (a crash), the broker goes with it.
  const killOnExit = (): void => {
    child.kill("SIGKILL");
  };
  process.once("exit", killOnExit);
  child.once("exit", () => process.removeListener("exit", killOnExit));
  let stderr = "";
  try {
    const [address, controlPlaneUrl] = await new Promise<[string, string]>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the broker did not start within ${START_MS} ms:\n${stderr}`)),
        START_MS,
      );
      child.stderr?.setEncoding("utf8");
      child.stderr?.on("data", (chunk: string) => {
        stderr += chunk;
        const broker = /broker \(gRPC\):\s+(\S+)/.exec(stderr);
        const emulator = /control-plane emulator:\s+(\S+)/.exec(stderr);
        if (broker?.[1] && emulator?.[1]) {
          clearTimeout(timer);
          resolve([broker[1], emulator[1]]);
        }
      });
      child.once("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`the broker exited (${code ?? signal}) before it started:\n${stderr}`));
      });
    });
    return {
      address,
      controlPlaneUrl,
      emulatorRoot: new URL(controlPlaneUrl).origin,
      stop: () => stop(child),
    };
  } catch (error) {
    await stop(child);
    throw error;
  }
}
