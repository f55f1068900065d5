-- ARGV: lease id, ttl ms (0: keep the lease's TTL). Returns {owner, token,
-- expires ms, ttl ms, value}, 0 when the lease does not hold the lock (an
-- expired grant is gone, or inside its lock-delay: no resurrection), or -1
-- when it holds it in a session (renewed only through the session). A
-- renewal is not an event; it keeps the event log as long as the lease.
local now = now_ms()
reap(now)
local h = holder(now, 'id', 'owner', 'ttl', 'value')
if not h or h[5] ~= ARGV[1] then return 0 end
if h[2] then return -1 end
local ttl = tonumber(ARGV[2])
-- (a grant written before TTLs were stored keeps its remaining time)
if ttl == 0 then ttl = tonumber(h[7]) or redis.call('PTTL', lock) end
local exp = now + ttl
redis.call('HSET', lock, 'exp', exp, 'ttl', ttl)
redis.call('PEXPIRE', lock, ttl + (tonumber(h[3]) or 0))
redis.call('PEXPIRE', stream, ttl + keep_ms)
return {h[6], tonumber(h[4]), exp, ttl, h[8] or ''}
