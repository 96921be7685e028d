import { BrokerClient, httpHeaders } from "@credential-broker/client";

const broker = new BrokerClient(process.env.BROKER_ADDRESS ?? "127.0.0.1:50051");
const url = `${process.env.CONTROLPLANE_URL}/protected`;
try {
  let auth = await broker.getAuthorization({ threadId: "thread-42" });
  let response = await fetch(url, { headers: httpHeaders(auth) });
  if (response.status === 401) {
    // the task was revoked or replaced: report it once, retry once with the replacement
    auth = await broker.reportRejection(auth, { httpStatus: response.status });
    response = await fetch(url, { headers: httpHeaders(auth) });
  }
  const body = (await response.json()) as { task_id?: string };
  console.log(response.status, body.task_id === auth.taskId);
} finally {
  broker.close();
}
