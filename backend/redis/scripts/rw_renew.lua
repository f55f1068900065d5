-- ARGV: lease id, ttl ms (0: keep the lease's TTL). Returns {mode, token,
-- expires ms, ttl ms, owner}, or 0 when the lease holds nothing (never a
-- resurrection). Only this lease's deadline moves.
local now = now_ms()
local hs = live(now)
local v = redis.call('HGET', holders, ARGV[1])
if not v then return 0 end
local r = parse(v)
local ttl = tonumber(ARGV[2])
if ttl == 0 then ttl = r.ttl end
local exp = now + ttl
redis.call('HSET', holders, ARGV[1], record(exp, r.mode, r.token, ttl, r.owner))
for _, h in ipairs(hs) do
  if h.id == ARGV[1] then h.exp = exp end
end
keep(hs, now)
return {r.mode, r.token, exp, ttl, r.owner}
