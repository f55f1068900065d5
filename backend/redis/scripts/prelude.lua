-- Shared by every script (prepended in Go). KEYS are always, in order:
-- the lock hash, the fencing counter, the queue list, the waiters' heartbeat
-- deadlines (zset), the key's event log (stream). They share one hash tag,
-- so one cluster slot.
local lock, fence, queue, beats, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

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

-- The event log: one stream entry per change of the holder, written by the
-- script that makes the change. Fields: n (1, 2, 3... with no gap while the
-- stream lives: a reader that sees a jump lost entries), e (a acquired, p
-- proclaimed, r released, x expired), t token, o owner, v value, x the
-- holder's deadline (ms). Kept about 1000 entries, and an hour past the
-- holder's deadline.
local keep_ms = 3600000

local function last_event()
  local e = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if not e[1] then return nil end
  local f, m = e[1][2], {id = e[1][1]}
  for i = 1, #f, 2 do m[f[i]] = f[i + 1] end
  return m
end

local function emit(now, kind, token, owner, value, exp)
  local last = last_event()
  local n = 1
  if last then n = tonumber(last.n) + 1 end
  exp = tonumber(exp) or 0
  redis.call('XADD', stream, 'MAXLEN', '~', 1000, '*', 'n', n, 'e', kind, 't', token, 'o', owner or '', 'v', value or '', 'x', exp)
  redis.call('PEXPIRE', stream, math.max(exp - now, 0) + keep_ms)
end

-- Redis expires a lease's key unseen. Whoever looks next (an acquire, a
-- renew, an observer's timer at the deadline) removes a grant whose deadline
-- passed and logs its expiry, once.
local function reap(now)
  local h = redis.call('HMGET', lock, 'token', 'exp')
  if h[1] then
    local e = tonumber(h[2])
    if not e or e > now then return end
    redis.call('DEL', lock)
  end
  local last = last_event()
  if last and (last.e == 'a' or last.e == 'p') then
    emit(now, 'x', last.t, last.o, last.v, last.x)
  end
end
