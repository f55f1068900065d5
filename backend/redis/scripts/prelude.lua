-- Shared by every script (prepended in Go). KEYS are always, in order:
-- the lock hash, the fencing counter, the queue list, the waiters' heartbeat
-- deadlines (zset). They share one hash tag, so one cluster slot.
local lock, fence, queue, beats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- Redis's own clock in Unix ms: every replica of lockd agrees on it.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Drops waiters at the head of the queue whose heartbeat lapsed (their lockd
-- died or lost Redis): a dead waiter must not block the lock for long.
local function prune(now)
  while true do
    local head = redis.call('LINDEX', queue, 0)
    if not head then return false end
    local d = redis.call('ZSCORE', beats, head)
    if d and tonumber(d) > now then return head end
    redis.call('LPOP', queue)
    redis.call('ZREM', beats, head)
  end
end

-- Tells the first live waiter, if any, that the lock is free.
local function wake(now, channel)
  local head = prune(now)
  if head then redis.call('PUBLISH', channel, head) end
end
