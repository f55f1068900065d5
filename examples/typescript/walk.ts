// A newcomer's walk through lockd with a client generated from
// api/openapi.yaml (openapi-typescript) and called through openapi-fetch:
// acquire → renew → inspect → release → release again (410). The key has a
// ':' in it, which openapi-fetch sends percent-encoded (reports%3Anightly).
//
//   LOCKD_URL=http://127.0.0.1:7070 node dist/walk.js reports:nightly
import createClient from "openapi-fetch";
import type { paths } from "./schema.js";

const baseUrl = process.env.LOCKD_URL ?? "http://127.0.0.1:7070";
const key = process.argv[2] ?? "reports:nightly";
const lockd = createClient<paths>({ baseUrl });

function fail(msg: string): never {
  console.error("walk: " + msg);
  process.exit(1);
}

const path = { key };

// Acquire with only an owner: ttl_ms and wait_ms are optional. Count the
// deadline from the moment the request was SENT, not from expires_at.
let sent = performance.now();
const acq = await lockd.POST("/v1/locks/{key}/acquire", {
  params: { path, header: { "Idempotency-Key": crypto.randomUUID() } },
  body: { owner: "walk.ts" },
});
if (!acq.data) fail(`acquire: ${acq.response.status} ${JSON.stringify(acq.error)}`);
const grant = acq.data;
let deadline = sent + grant.ttl_ms;
console.log(`acquired ${grant.key} token=${grant.token}`);

// Someone else asking gets a typed problem: 409 lock_held, with the holder.
const other = await lockd.POST("/v1/locks/{key}/acquire", { params: { path }, body: {} });
if (other.response.status !== 409 || other.error?.code !== "lock_held" || other.error.holder?.token !== grant.token) {
  fail(`second acquire: ${other.response.status} ${JSON.stringify(other.error)}, want 409 lock_held by token ${grant.token}`);
}
console.log(`refused ${key}: ${other.error.code}`);

sent = performance.now();
const ren = await lockd.POST("/v1/locks/{key}/renew", {
  params: { path },
  body: { lease_id: grant.lease_id, ttl_ms: 10000 },
});
if (!ren.data || ren.data.token !== grant.token) fail(`renew: ${ren.response.status} ${JSON.stringify(ren.error ?? ren.data)}`);
deadline = sent + ren.data.ttl_ms;
console.log(`renewed ${key} token=${ren.data.token} for ${Math.round(deadline - performance.now())}ms`);

const st = await lockd.GET("/v1/locks/{key}", { params: { path } });
if (!st.data || !st.data.held || st.data.key !== key || st.data.token !== grant.token) {
  fail(`inspect: ${st.response.status} ${JSON.stringify(st.error ?? st.data)}`);
}
console.log(`inspected ${st.data.key} held=${st.data.held} owner=${st.data.owner}`);

const rel = await lockd.POST("/v1/locks/{key}/release", { params: { path }, body: { lease_id: grant.lease_id } });
if (rel.response.status !== 204) fail(`release: ${rel.response.status} ${JSON.stringify(rel.error)}`);
console.log(`released ${key}`);

// The lease is gone: a second release is a typed 410 lease_expired.
const again = await lockd.POST("/v1/locks/{key}/release", { params: { path }, body: { lease_id: grant.lease_id } });
if (again.response.status !== 410 || again.error?.code !== "lease_expired") {
  fail(`second release: ${again.response.status} ${JSON.stringify(again.error)}, want 410 lease_expired`);
}
console.log(`released again: ${again.response.status} ${again.error.code}`);
