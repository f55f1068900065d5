-- ARGV: lease id, value. Sets an election leader's value, keeping its term
-- and deadline. Returns {owner, token, expires ms, ttl ms, value} or 0 when
-- the lease does not hold the election.
local now = now_ms()
reap(now)
local h = redis.call('HMGET', lock, 'id', 'owner', 'token', 'exp', 'ttl', 's')
if h[1] ~= ARGV[1] then return 0 end
local exp, ttl = tonumber(h[4]), tonumber(h[5])
if h[6] then exp, ttl = session_deadline(h[6]) end
redis.call('HSET', lock, 'value', ARGV[2])
emit(now, 'p', h[3], h[2], ARGV[2], exp)
if h[6] then
  -- The log lives as long as the grant's key (see acquire.lua).
  local gc = tonumber(redis.call('HGET', h[6], 'gc')) or (exp + keep_ms)
  redis.call('PEXPIRE', stream, gc - now + keep_ms)
end
return {h[2], tonumber(h[3]), exp, ttl, ARGV[2]}
