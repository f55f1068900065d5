-- ARGV: lease id, ttl ms (0: keep the lease's TTL). Returns {owner, token,
-- expires ms, ttl ms} or 0 when the lease does not hold the lock (an expired
-- key is gone: no resurrection).
local h = redis.call('HMGET', lock, 'id', 'owner', 'token', 'ttl')
if h[1] ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[2])
-- (a grant written before TTLs were stored keeps its remaining time)
if ttl == 0 then ttl = tonumber(h[4]) or redis.call('PTTL', lock) end
local exp = now_ms() + ttl
redis.call('HSET', lock, 'exp', exp, 'ttl', ttl)
redis.call('PEXPIRE', lock, ttl)
return {h[2], tonumber(h[3]), exp, ttl}
