-- ARGV: lease id, owner, ttl ms, waiter id ('' for a single try), heartbeat
-- timeout ms. Returns {granted, owner, token, expires ms, now ms, held}.
local waiter = ARGV[4]
local now = now_ms()
local head = prune(now)

local function enqueue()
  if waiter == '' then return end
  if not redis.call('ZSCORE', beats, waiter) then
    redis.call('RPUSH', queue, waiter)
  end
  redis.call('ZADD', beats, now + tonumber(ARGV[5]), waiter)
  -- Queue keys vanish on their own once every waiter stopped beating.
  redis.call('PEXPIRE', queue, ARGV[5])
  redis.call('PEXPIRE', beats, ARGV[5])
end

local h = redis.call('HMGET', lock, 'owner', 'token', 'exp')
if h[2] then
  enqueue()
  return {0, h[1], tonumber(h[2]), tonumber(h[3]), now, 1}
end
if head and head ~= waiter then
  -- Free, but promised to the waiter at the head, who has been woken.
  enqueue()
  return {0, '', 0, 0, now, 0}
end
if head then
  redis.call('LPOP', queue)
  redis.call('ZREM', beats, waiter)
end
local token = redis.call('INCR', fence)
local exp = now + tonumber(ARGV[3])
redis.call('HSET', lock, 'id', ARGV[1], 'owner', ARGV[2], 'token', token, 'exp', exp, 'ttl', ARGV[3])
redis.call('PEXPIRE', lock, ARGV[3])
return {1, ARGV[2], token, exp, now, 0}
