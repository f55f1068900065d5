-- One master's half of a Redlock acquire. KEYS: lock hash, fencing counter.
-- ARGV: lease id, owner, ttl ms, deadline ms (the client's). Returns
-- {1, token} when this master grants, {0, id, owner, token, deadline} of the
-- holder when it is held here.
local lock, fence = KEYS[1], KEYS[2]
local h = redis.call('HMGET', lock, 'id', 'owner', 'token', 'exp')
if h[1] then
  return {0, h[1], h[2], tonumber(h[3]), tonumber(h[4])}
end
local token = redis.call('INCR', fence)
redis.call('HSET', lock, 'id', ARGV[1], 'owner', ARGV[2], 'token', token, 'exp', ARGV[4], 'ttl', ARGV[3])
redis.call('PEXPIRE', lock, ARGV[3])
return {1, token}
