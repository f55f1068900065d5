-- ARGV: lease id, ttl ms (0: keep the lease's TTL). Returns {mode, token,
-- expires ms, ttl ms, owner}, 0 when the lease holds nothing (never a
-- resurrection), or -1 when it holds in a session (renewed only through the
-- session). Only this lease's deadline moves.
local now = now_ms()
local hs, delays = rw_live(now)
local r
for _, h in ipairs(hs) do
  if h.id == ARGV[1] then r = h end
end
if not r then return 0 end
if r.sess then return -1 end
local ttl = tonumber(ARGV[2])
if ttl == 0 then ttl = r.ttl end
local exp = now + ttl
redis.call('HSET', holders, ARGV[1], rw_record(exp, r.mode, r.token, ttl, r.d, r.owner))
r.exp = exp
rw_keep(hs, now, delays)
return {r.mode, r.token, exp, ttl, r.owner}
