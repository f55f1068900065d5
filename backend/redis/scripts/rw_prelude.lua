-- Shared by the read-write lock scripts (prepended in Go). KEYS, in order:
-- the holders hash (lease id -> "deadline|mode|token|ttl|owner"), the
-- fencing counter, the queue list (entries "r:<waiter>" or "w:<waiter>", in
-- arrival order: one FIFO queue for both modes), the waiters' heartbeat
-- deadlines (zset entry -> Redis ms). One hash tag, so one cluster slot.
-- Deadlines are Redis's clock: every lockd replica agrees on them.
local holders, fence, queue, beats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function parse(v)
  local exp, mode, token, ttl, owner = string.match(v, '^(%d+)|(%a)|(%d+)|(%d+)|(.*)$')
  return {exp = tonumber(exp), mode = mode, token = tonumber(token), ttl = tonumber(ttl), owner = owner}
end

local function record(exp, mode, token, ttl, owner)
  return exp .. '|' .. mode .. '|' .. token .. '|' .. ttl .. '|' .. owner
end

-- The unexpired holders, in no order, after removing the expired ones (each
-- reader's lease is its own: one expiring never touches another).
local function live(now)
  local all = redis.call('HGETALL', holders)
  local out = {}
  for i = 1, #all, 2 do
    local r = parse(all[i + 1])
    if r.exp <= now then
      redis.call('HDEL', holders, all[i])
    else
      r.id = all[i]
      out[#out + 1] = r
    end
  end
  return out
end

local function writer_holds(hs)
  for _, h in ipairs(hs) do
    if h.mode == 'w' then return true end
  end
  return false
end

-- The hash lives as long as its last lease (garbage collection only: every
-- decision compares deadlines with now).
local function keep(hs, now)
  local last = 0
  for _, h in ipairs(hs) do
    if h.exp > last then last = h.exp end
  end
  if last > now then redis.call('PEXPIRE', holders, last - now) end
end

-- The live queue entries in order, after dropping the waiters whose
-- heartbeat lapsed (their lockd died): a dead waiter must not block others.
local function waiters(now)
  local q = redis.call('LRANGE', queue, 0, -1)
  local out = {}
  for _, e in ipairs(q) do
    local d = redis.call('ZSCORE', beats, e)
    if d and tonumber(d) > now then
      out[#out + 1] = e
    else
      redis.call('LREM', queue, 0, e)
      redis.call('ZREM', beats, e)
    end
  end
  return out
end

-- Publishes every waiter that may be granted now: the readers at the head
-- while no writer holds, or the writer at the head when nobody holds.
local function wake(hs, ws, channel)
  local wh = writer_holds(hs)
  for i, e in ipairs(ws) do
    if string.sub(e, 1, 2) == 'w:' then
      if i == 1 and #hs == 0 then redis.call('PUBLISH', channel, string.sub(e, 3)) end
      return
    end
    if wh then return end
    redis.call('PUBLISH', channel, string.sub(e, 3))
  end
end
