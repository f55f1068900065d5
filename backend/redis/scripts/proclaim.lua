-- ARGV: lease id, value. Sets an election leader's value, keeping its term
-- and deadline. Returns {owner, token, expires ms, ttl ms, value} or 0 when
-- the lease does not hold the election.
local now = now_ms()
reap(now)
local h = redis.call('HMGET', lock, 'id', 'owner', 'token', 'exp', 'ttl')
if h[1] ~= ARGV[1] then return 0 end
redis.call('HSET', lock, 'value', ARGV[2])
emit(now, 'p', h[3], h[2], ARGV[2], h[4])
return {h[2], tonumber(h[3]), tonumber(h[4]), tonumber(h[5]), ARGV[2]}
