-- KEYS: lock. ARGV: lease id, ttl ms, deadline ms. Returns {owner, token}
-- when the lease holds the lock on this master, else 0 (an expired key is
-- gone here: no resurrection).
local lock = KEYS[1]
local h = redis.call('HMGET', lock, 'id', 'owner', 'token')
if h[1] ~= ARGV[1] then return 0 end
redis.call('HSET', lock, 'exp', ARGV[3])
redis.call('PEXPIRE', lock, ARGV[2])
return {h[2], tonumber(h[3])}
