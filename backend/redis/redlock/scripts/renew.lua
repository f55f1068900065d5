-- KEYS: lock. ARGV: lease id, ttl ms (0: keep the lease's TTL), the
-- renewal's start in the client's Unix ms. Returns {owner, token, ttl ms}
-- when the lease holds the lock on this master, else 0 (an expired key is
-- gone here: no resurrection).
local lock = KEYS[1]
local h = redis.call('HMGET', lock, 'id', 'owner', 'token', 'ttl')
if h[1] ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[2])
-- (a grant written before TTLs were stored keeps its remaining time)
if ttl == 0 then ttl = tonumber(h[4]) or redis.call('PTTL', lock) end
redis.call('HSET', lock, 'exp', tonumber(ARGV[3]) + ttl, 'ttl', ttl)
redis.call('PEXPIRE', lock, ttl)
return {h[2], tonumber(h[3]), ttl}
