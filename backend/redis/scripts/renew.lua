-- ARGV: lease id, ttl ms. Returns {owner, token, expires ms} or 0 when the
-- lease does not hold the lock (an expired key is gone: no resurrection).
local h = redis.call('HMGET', lock, 'id', 'owner', 'token')
if h[1] ~= ARGV[1] then return 0 end
local exp = now_ms() + tonumber(ARGV[2])
redis.call('HSET', lock, 'exp', exp)
redis.call('PEXPIRE', lock, ARGV[2])
return {h[2], tonumber(h[3]), exp}
