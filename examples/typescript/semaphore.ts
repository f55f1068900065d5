// A semaphore of 2 through the client generated from api/openapi.yaml: two
// permits in distinct slots, a third refused with the holders by slot,
// another size refused with the current one, a waiter served in the slot a
// release frees (with a higher token: fence per (key, slot)), renew, inspect
// and release. Permits take no Idempotency-Key yet, so none is sent.
//
//   LOCKD_URL=http://127.0.0.1:7070 node dist/semaphore.js api:quota
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Permit = components["schemas"]["Permit"];

const baseUrl = process.env.LOCKD_URL ?? "http://127.0.0.1:7070";
const key = process.argv[2] ?? "api:quota";
const lockd = createClient<paths>({ baseUrl });
const path = { key };

function fail(msg: string): never {
  console.error("semaphore: " + msg);
  process.exit(1);
}

async function acquire(owner: string, wait_ms = 0): Promise<Permit> {
  const r = await lockd.POST("/v1/semaphores/{key}/acquire", {
    params: { path },
    body: { permits: 2, ttl_ms: 10000, wait_ms, owner },
  });
  if (!r.data) fail(`acquire ${owner}: ${r.response.status} ${JSON.stringify(r.error)}`);
  console.log(`permit ${owner} slot=${r.data.slot} token=${r.data.token}`);
  return r.data;
}

async function release(p: Permit): Promise<number> {
  const r = await lockd.POST("/v1/semaphores/{key}/release", { params: { path }, body: { lease_id: p.lease_id } });
  return r.response.status;
}

// The headers a fenced resource (examples/kvstore) checks on a permit's write.
function fenceHeaders(p: Permit): Record<string, string> {
  return { "Lock-Key": p.key, "Lock-Slot": String(p.slot), "Lock-Token": String(p.token) };
}

const a = await acquire("ts-1");
const b = await acquire("ts-2");
if (a.slot === b.slot || a.permits !== 2) fail(`slots ${a.slot} and ${b.slot} of ${a.permits}`);

// Full: 409 lock_held, with the holders by slot.
const full = await lockd.POST("/v1/semaphores/{key}/acquire", { params: { path }, body: { permits: 2 } });
const slots = (full.error?.holders ?? []).map((h) => ("slot" in h ? h.slot : -1)).sort();
if (full.response.status !== 409 || full.error?.code !== "lock_held" || slots.join(",") !== "0,1") {
  fail(`third permit: ${full.response.status} ${JSON.stringify(full.error)}, want 409 lock_held by slots 0,1`);
}
console.log(`refused ${key}: ${full.error.code} holders(slots)=${slots.join(",")}`);

// Another size while the semaphore is live: 409 permits_mismatch.
const other = await lockd.POST("/v1/semaphores/{key}/acquire", { params: { path }, body: { permits: 3 } });
if (other.response.status !== 409 || other.error?.code !== "permits_mismatch" || other.error.permits !== 2) {
  fail(`permits 3: ${other.response.status} ${JSON.stringify(other.error)}, want 409 permits_mismatch of 2`);
}
console.log(`refused permits=3: ${other.error.code} permits=${other.error.permits}`);

// A waiter is served in the slot a release frees, with a higher token.
const waiting = acquire("ts-3", 20000);
for (;;) {
  const st = await lockd.GET("/v1/semaphores/{key}", { params: { path } });
  if (st.data?.waiters === 1) break;
  await new Promise((r) => setTimeout(r, 50));
}
if ((await release(a)) !== 204) fail("release ts-1");
const c = await waiting;
if (c.slot !== a.slot || c.token <= b.token) fail(`waiter got slot ${c.slot} token ${c.token}; want slot ${a.slot}, token above ${b.token}`);
console.log(`waiter took slot=${c.slot} token=${c.token} > ${a.token}; fence with ${JSON.stringify(fenceHeaders(c))}`);

const ren = await lockd.POST("/v1/semaphores/{key}/renew", { params: { path }, body: { lease_id: b.lease_id, ttl_ms: 10000 } });
if (!ren.data || ren.data.slot !== b.slot || ren.data.token !== b.token) fail(`renew: ${ren.response.status} ${JSON.stringify(ren.error ?? ren.data)}`);
console.log(`renewed slot=${ren.data.slot} token=${ren.data.token}`);

const st = await lockd.GET("/v1/semaphores/{key}", { params: { path } });
if (!st.data || st.data.permits !== 2 || st.data.holders.length !== 2) fail(`inspect: ${JSON.stringify(st.error ?? st.data)}`);
console.log(`inspected ${st.data.key} permits=${st.data.permits} holders=${st.data.holders.map((h) => h.owner).sort().join(",")}`);

if ((await release(b)) !== 204 || (await release(c)) !== 204) fail("release ts-2, ts-3");
const again = await lockd.POST("/v1/semaphores/{key}/release", { params: { path }, body: { lease_id: c.lease_id } });
if (again.response.status !== 410 || again.error?.code !== "lease_expired") {
  fail(`second release: ${again.response.status} ${JSON.stringify(again.error)}, want 410 lease_expired`);
}
console.log(`released all; again: ${again.response.status} ${again.error.code}`);
