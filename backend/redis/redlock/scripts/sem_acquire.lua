-- One master's half of a Redlock acquire of one semaphore slot. KEYS: the
-- slot's hash {id, owner, token, exp, ttl} (as a lock's), the semaphore's
-- fencing counter (one for all its slots), its live zset (slot -> this
-- master's deadline for it, Redis ms) and its size. ARGV: lease id, owner,
-- ttl ms, deadline ms (the client's), size asked, slot. Returns
--   {1, token}                          granted here (or already, to this lease);
--   {0, id, owner, token, deadline}     the slot is held here by another lease;
--   {-4, size}                          live permits here have another size.
local slot, fence, live, size = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', slot, 'id', 'owner', 'token', 'exp')
if h[1] == ARGV[1] then return {1, tonumber(h[3])} end
-- The size is carried by the live permits (this master's view of them).
if redis.call('ZCOUNT', live, '(' .. now, '+inf') > 0 then
  local n = tonumber(redis.call('GET', size))
  if n and n ~= tonumber(ARGV[5]) then return {-4, n} end
end
if h[1] then return {0, h[1], h[2], tonumber(h[3]), tonumber(h[4])} end
local ttl = tonumber(ARGV[3])
local token = redis.call('INCR', fence)
redis.call('HSET', slot, 'id', ARGV[1], 'owner', ARGV[2], 'token', token, 'exp', ARGV[4], 'ttl', ttl)
redis.call('PEXPIRE', slot, ttl)
redis.call('ZADD', live, now + ttl, ARGV[6])
redis.call('SET', size, ARGV[5])
for _, k in ipairs({live, size}) do
  if tonumber(redis.call('PTTL', k)) < ttl then redis.call('PEXPIRE', k, ttl) end
end
return {1, token}
