-- ARGV: lease id, value. Sets an election leader's value, keeping its term
-- and deadline. Returns {owner, token, expires ms, ttl ms, value} or 0 when
-- the lease does not hold the election (nor does an expired leader inside
-- its lock-delay).
local now = now_ms()
reap(now)
local h = holder(now, 'id', 'owner', 'ttl')
if not h or h[5] ~= ARGV[1] then return 0 end
local exp, ttl = tonumber(h[1]), tonumber(h[7])
if h[2] then exp, ttl = session_deadline(h[2]) end
redis.call('HSET', lock, 'value', ARGV[2])
emit(now, 'p', h[4], h[6], ARGV[2], exp)
if h[2] then
  -- The log lives as long as the grant's key (see acquire.lua).
  local gc = tonumber(redis.call('HGET', h[2], 'gc')) or (exp + keep_ms)
  redis.call('PEXPIRE', stream, gc - now + keep_ms)
end
return {h[6], tonumber(h[4]), exp, ttl, ARGV[2]}
