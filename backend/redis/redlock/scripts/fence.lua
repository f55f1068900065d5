-- Raises this master's counter and its copy of the grant's token to the
-- token chosen from the majority, so that any later majority (which shares a
-- master with this one) counts past it. KEYS: lock, fence. ARGV: lease id,
-- token. Returns 1, or 0 when the lease no longer holds the lock here.
local lock, fence = KEYS[1], KEYS[2]
if redis.call('HGET', lock, 'id') ~= ARGV[1] then return 0 end
redis.call('HSET', lock, 'token', ARGV[2])
local cur = tonumber(redis.call('GET', fence) or '0')
if cur < tonumber(ARGV[2]) then redis.call('SET', fence, ARGV[2]) end
return 1
